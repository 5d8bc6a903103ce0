# Two entry points on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test install clean

$(BIN)/hifiedit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/hifiedit

demo: install
	$(BIN)/hifiedit demo --out outputs/demo --force

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) outputs .pytest_cache
