# Two entry points on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test install browser clean

$(BIN)/hifiedit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/hifiedit

demo: install
	$(BIN)/hifiedit demo --out outputs/demo --force

# The web app's browser tests drive Debian's headless Chromium; they skip where it is absent.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: install
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	$(BIN)/python -c "import selenium" 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev]'

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) outputs .pytest_cache
