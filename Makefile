# The README's two commands: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The versions `make test` last passed with (`make lock` refreshes them; see README "Install and lock").
LOCK := requirements.lock
export DAPT_HOME ?= $(CURDIR)/.dapt

.PHONY: demo test setup lint check bench clean lock screenshot

$(BIN)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip -c $(LOCK)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[test,dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/dapt demo recipes/demo.yaml

test: setup
	@bash scripts/ensure-postgres.sh || echo 'postgres unavailable: its tests will be skipped'
	@bash scripts/ensure-chromium.sh || echo 'chromium unavailable: the browser tests will be skipped'
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# What CI runs before the tests: lint, formatting and types must all be clean (mypy's files: pyproject.toml).
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/validate.py
	$(BIN)/python benchmarks/serve.py

# docs/registry-ui.png, the README's picture of `dapt ui`, by headless Chromium: the registry `make demo` left in
# DAPT_HOME, or without one two tiny-BERT runs on the sample data into a temporary registry.
screenshot: setup
	@bash scripts/ensure-chromium.sh
	if [ -f "$(DAPT_HOME)/registry.db" ]; then $(BIN)/python scripts/ui_screenshot.py --home "$(DAPT_HOME)"; \
	else $(BIN)/python scripts/ui_screenshot.py; fi

# Resolve pyproject.toml afresh in a throwaway venv (no -c), then write requirements.lock and the Bento
# requirement files (docker/requirements.{gpu,cpu}.txt) from what it installed. Review the diff, `make test`.
lock:
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	$(PYTHON) -m venv "$$d/venv" && \
	"$$d/venv/bin/python" -m pip install -q --upgrade pip && \
	"$$d/venv/bin/python" -m pip install -q -e '.[test,dev]' && \
	"$$d/venv/bin/python" scripts/lock.py

clean:
	rm -rf $(DAPT_HOME)
