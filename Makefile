# Fresh machine: `make serve` installs and starts the service; `make test` installs and tests.
# torch 2.13.0 (CPU wheel) goes in first and stays pinned through constraints.txt: without it
# pip resolves torch to a multi-GB CUDA build.
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install serve test lint chromium

$(BIN)/reptile: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/reptile

serve: install
	$(BIN)/reptile serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The MLflow UI browser test needs Debian's chromium: installed here when missing and root can
# run apt-get; otherwise that test is skipped.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium not installed (needs root and apt-get): the browser test is skipped"; \
	  fi; \
	}

test: lint chromium
	$(BIN)/pytest
