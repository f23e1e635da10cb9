# The README's commands. Each target installs what it needs first (into a virtual environment,
# .venv by default), so each is one command on a fresh machine. Installs use constraints.txt:
# the versions CI tested.
VENV ?= .venv
SYSTEM_PYTHON ?= python3
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0
PROMPT ?= a red circle moving right on a black background
SECONDS ?= 4
OUT ?= out.mp4
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv install install-dev serve generate test test-fast bench constraints gpu-wheels gpu-check

$(PYTHON):
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PYTHON)

# The CPU build of torch is pinned so pip never pulls the multi-GB CUDA build; on a GPU box
# install your CUDA torch into the venv first, then `make install` keeps it (torch>=2.4 is met).
install: venv
	$(PIP) install -q torch==$(TORCH_VERSION) -c constraints.txt
	$(PIP) install -q -e . -c constraints.txt

install-dev: venv
	$(PIP) install -q torch==$(TORCH_VERSION) -c constraints.txt
	$(PIP) install -q -e '.[dev]' -c constraints.txt

serve: install
	$(PYTHON) -m sana_serve serve --host $(HOST) --port $(PORT) --data-dir data

generate: install
	$(PYTHON) -m sana_serve generate --prompt "$(PROMPT)" --seconds $(SECONDS) --seed 0 --out $(OUT) --report $(OUT).report.json

test: install-dev
	$(PYTHON) -m pytest -q

# The inner loop of server work: the in-process tests of the server, its backends' contracts and the
# cluster's storage; nothing that starts a server or redis-server (marker `processes`). `make test`
# still runs everything.
test-fast: install-dev
	$(PYTHON) -m pytest -q -m "not processes" tests/contracts tests/server tests/cluster

bench: install-dev
	$(PYTHON) bench/engine.py

# The prepared GPU check (README "GPU check"). gpu-wheels, here: the cp312 manylinux wheels of the
# few pure dependencies bench/gpu_check.py needs beyond torch and triton, in case the GPU machine's
# Python lacks them (it has them when transformers is installed). gpu-check, there, with its own
# python3 and no network: uses the wheels only if an import is missing.
GPU_OUT ?= gpu-check-out
gpu-wheels:
	$(PYTHON) -m pip download -q --dest gpu-wheels --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 pyyaml tqdm safetensors numpy
	du -ch gpu-wheels/*.whl | tail -1

gpu-check:
	python3 -c "import yaml, tqdm, safetensors, numpy" 2>/dev/null || \
		python3 -m pip install -q --no-index --no-deps --target .gpu-site gpu-wheels/*.whl
	PYTHONPATH=.gpu-site python3 bench/gpu_check.py --out $(GPU_OUT)

# Re-resolve every dependency at its newest release in a scratch venv and rewrite constraints.txt;
# then run `make test` and commit both if it passes.
constraints:
	rm -rf .venv-constraints
	$(SYSTEM_PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install -q --upgrade pip
	.venv-constraints/bin/pip install -q torch==$(TORCH_VERSION)
	.venv-constraints/bin/pip install -q -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; .venv-constraints/bin/pip freeze --exclude-editable | grep -viE '^(torch|sana-serve)[=@ ]'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints
