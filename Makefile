# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAPT_HOME ?= $(CURDIR)/.dapt

.PHONY: demo test setup lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/dapt demo recipes/demo.yaml

test: setup
	@bash scripts/ensure-postgres.sh || echo 'postgres unavailable: its tests will be skipped'
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/validate.py
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(DAPT_HOME)
