# Quickstart targets: each creates the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eesep_jax demo

# pytest exits 5 when it collected no test: that is a failure here, like any other non-zero code.
# Tests run on every core (pytest-xdist): most of their time is XLA compiling, which uses
# one core per program. `make test PYTEST_WORKERS=0` runs them in this process.
PYTEST_WORKERS ?= auto
test: lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

# Lint and format drift fail `make test` (and CI) in seconds, before pytest starts;
# `make format` applies ruff's layout and its safe lint fixes.
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check

format: $(STAMP)
	$(BIN)/ruff check --fix
	$(BIN)/ruff format

clean:
	rm -rf $(VENV) runs .pytest_cache
