# The README's commands. Each target installs what it needs first, so each is one
# command on a fresh machine.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PROMPT ?= a red circle moving right on a black background
SECONDS ?= 4
OUT ?= out.mp4
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev serve generate test bench

# The CPU build of torch is pinned so pip never pulls the multi-GB CUDA build; on a GPU box
# install your CUDA torch first and run `pip install -e .` instead.
install:
	$(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -q -e .

install-dev:
	$(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -q -e '.[dev]'

serve: install
	sana-serve serve --host $(HOST) --port $(PORT) --data-dir data

generate: install
	sana-serve generate --prompt "$(PROMPT)" --seconds $(SECONDS) --seed 0 --out $(OUT) --report $(OUT).report.json

test: install-dev
	$(PYTHON) -m pytest -q

bench: install-dev
	$(PYTHON) bench/engine.py
