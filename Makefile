# Two entry points for a fresh machine: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev test lint bench clean fault-report

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local]'
	# bqemulator loads DuckDB's spatial extension at start; install it from the pinned wheel (offline).
	$(BIN)/python -c "from duckdb_extensions import import_extension; import_extension('spatial')"
	touch $(STAMP)

dev: install
	$(BIN)/alert-platform dev

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest

# The fault and bad-input suite (tests/faults, also part of `make test`), then its results table.
fault-report: install
	$(BIN)/pytest tests/faults; status=$$?; $(BIN)/python -m tests.faults.report; exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m pip install --quiet -e '.[local,bench]'
	$(BIN)/python -m bench
	$(BIN)/python -m bench.bench_stream

clean:
	rm -rf $(VENV) .alert-platform .pytest_cache .import_linter_cache
