# Fresh machine: `make serve` installs and starts the service; `make test` installs and tests.
# torch 2.13.0 (CPU wheel) goes in first and stays pinned through constraints.txt: without it
# pip resolves torch to a multi-GB CUDA build.
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install serve test lint

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

test: lint
	$(BIN)/pytest
