# Quickstart targets: each creates the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

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
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

clean:
	rm -rf $(VENV) runs .pytest_cache
