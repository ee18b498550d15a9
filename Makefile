# Fresh machine: `make quickstart` (local stack + the quickstart config), `make test` (lint, types, whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CDC_HOME ?= .cdc
export CDC_HOME

.PHONY: quickstart test venv lint typecheck pytest dev-up dev-down dev-status

venv: $(VENV)/.installed

# Reinstalled when pyproject.toml changes (new dependencies); the package itself is editable.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# A demo table gives the quickstart config something to capture.
QUICKSTART_SEED := create table if not exists public.customers (id bigint primary key, name text not null, email text); \
	insert into public.customers values (1, 'Ada', 'ada@example.com'), (2, 'Grace', null) on conflict (id) do nothing

quickstart: venv
	$(BIN)/cdc dev up
	set -a && . $(CDC_HOME)/dev.env && set +a && psql -q -v ON_ERROR_STOP=1 "$$CDC_SOURCE_DSN" -c "$(QUICKSTART_SEED)"
	$(BIN)/cdc --env-file $(CDC_HOME)/dev.env validate configs/quickstart.yaml

# The suite starts its own stack on free ports when no live one answers (see tests/conftest.py).
test: venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest

dev-up: venv
	$(BIN)/cdc dev up

dev-down: venv
	$(BIN)/cdc dev down

dev-status: venv
	$(BIN)/cdc dev status
