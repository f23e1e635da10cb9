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

.PHONY: venv install install-dev serve generate test test-fast bench constraints

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
