# One entry point for people and CI. `make run` starts the gateway, `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BUF_VERSION := 1.75.0
POSTGRES ?= postgres://postgres@127.0.0.1:5432

.PHONY: install run test lint pytest pytest-sqlite pytest-postgres protos buf-lint format clean bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Run the gateway: control + edge in one process, embedded SQLite, demo upstream unless configured.
run: install
	$(BIN)/claudeopus serve

## Everything CI checks: lint, types, contract, generated code, and the suite on SQLite and PostgreSQL.
test: lint pytest

lint: install buf-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy edge control clients bench
	$(BIN)/python scripts/generate_protos.py --check

buf-lint: install
	$(BIN)/python scripts/generate_protos.py --deps
	npx --yes @bufbuild/buf@$(BUF_VERSION) lint

pytest: pytest-sqlite pytest-postgres

pytest-sqlite: install
	CLAUDEOPUS_TEST_DATABASE=sqlite $(BIN)/pytest

pytest-postgres: install
	CLAUDEOPUS_TEST_DATABASE=$(POSTGRES) $(BIN)/pytest

## Regenerate clients/claudeopus/v1 from protos/ with the pinned tools.
protos: install
	$(BIN)/python scripts/generate_protos.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## The benchmark (not part of `make test`): direct vs bare relay vs full path, in one run. Installs nginx and
## wrk from apt when missing (as root); writes bench/results/latest.md and latest.json. Options: BENCH_ARGS=--help.
bench: install
	$(BIN)/python -m bench --postgres $(POSTGRES) $(BENCH_ARGS)
