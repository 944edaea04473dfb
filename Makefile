# Fresh machine: `make serve` installs and starts the service; `make test` installs and tests.
# torch 2.13.0 (CPU wheel) goes in first and stays pinned through constraints.txt: without it
# pip resolves torch to a multi-GB CUDA build.
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check

.PHONY: install serve test lint system-packages

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

# System packages some tests drive: PostgreSQL (tests/cluster), Debian's docker-compose
# (validates docker-compose.yml) and chromium (the MLflow UI browser test). Installed when
# missing and possible (root with apt-get); otherwise those tests skip and say why.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| missing="$$missing postgresql"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } \
		|| echo "could not install$$missing: the tests that need them skip"; \
	elif [ -n "$$missing" ]; then \
		echo "missing$$missing (needs root and apt-get): the tests that need them skip"; \
	fi

# Plain `pytest` leaves out the fault and cluster suites (a few minutes each); this runs them too.
test: lint system-packages
	$(BIN)/pytest -o addopts=-ra
