# The README's two commands: `make run` and `make test`. Both set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test chromium demo schema bench clean-db

# Creates .venv/ and installs the project with everything it needs (torch from the local pip cache).
$(VENV): $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Loads the demo images (idempotent), then serves the UI; the first start prints the admin password once.
run: $(VENV)
	$(BIN)/plankton demo
	$(BIN)/plankton serve

test: $(VENV) chromium
	$(BIN)/python -m pytest -q

# The browser tests drive Debian's Chromium (never a downloaded browser); CI runs as root.
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

# sql/schema.sql is generated from the migrations; tests/test_schema.py fails when it drifts.
schema: $(VENV)
	$(BIN)/alembic upgrade head --sql > sql/schema.sql

bench: $(VENV)
	$(BIN)/python bench/run_all.py
