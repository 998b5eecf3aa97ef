# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: letting pip resolve a bare `torch` would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

# The whole suite on SQLite + embedded Redis, then the service suite again on the machine's
# PostgreSQL and Redis servers (DARTS_TEST_BACKEND=postgres).
test: install lint
	$(BIN)/python -m pytest
	DARTS_TEST_BACKEND=postgres $(BIN)/python -m pytest tests/service

demo: install
	$(BIN)/python -m darts_core.demo

bench: install
	$(BIN)/python benchmarks/search_step.py

clean:
	rm -rf $(VENV) .darts .pytest_cache .ruff_cache
