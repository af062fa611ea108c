# The README's two commands: `make run` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test demo schema bench clean-db

# Creates .venv/ and installs the project with everything it needs (torch from the local pip cache).
$(VENV): $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)
	$(BIN)/plankton demo

test: $(VENV)
	$(BIN)/python -m pytest -q

# sql/schema.sql is generated from the migrations; tests/test_schema.py fails when it drifts.
schema: $(VENV)
	$(BIN)/alembic upgrade head --sql > sql/schema.sql

bench: $(VENV)
	$(BIN)/python bench/run_all.py
