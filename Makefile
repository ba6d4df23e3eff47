# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install run test lint check fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## run: the server on its embedded SQLite store under ./var (config: CONFIG=tracker.toml)
run: install
	$(BIN)/tracker serve $(if $(CONFIG),--config $(CONFIG))

## test: lint, types, then the whole suite against a throwaway PostGIS
test: install
	bash scripts/ensure-postgis.sh
	bash scripts/ensure-chromium.sh
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## fast: the quick loop, no PostGIS and no sockets
fast: install
	$(BIN)/pytest -m "not postgis and not e2e" $(PYTEST_ARGS)

## bench: ingest benchmark against a throwaway PostGIS, prints a table
bench: install
	bash scripts/ensure-postgis.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
