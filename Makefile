# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest bench api-docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The relay on the embedded default: SQLite under ./var, no Redis, generated admin key and cert.
run: $(BIN)/.installed
	$(BIN)/relay serve

# Everything CI runs: lint, format check, types, the whole test suite.
test: $(BIN)/.installed lint typecheck pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# Two worker processes (pytest-xdist): most tests wait on servers and timers, not the CPU.
PYTEST_WORKERS ?= 2
pytest: $(BIN)/.installed
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Relay vs a bare Python SMTP sink vs Postfix, on loopback (docs/benchmarks.md). Options go in
# BENCH_ARGS, e.g. make bench BENCH_ARGS="--database sqlite,postgres --duration 5".
bench: $(BIN)/.installed
	$(BIN)/python -m bench.relay_bench $(BENCH_ARGS)

# docs/api.md from the command registry and real example runs (tools/apidoc); tests/test_apidoc.py
# fails when it is stale.
api-docs: $(BIN)/.installed
	$(BIN)/python -m tools.apidoc > docs/api.md.new && mv docs/api.md.new docs/api.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
