# Two commands from a fresh machine: `make demo` and `make test`. Only python3 (with venv/pip) is assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MEMBERS ?= 10000
SEED ?= 42
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: setup demo test lint dev bench crash clean

UV_VERSION := 0.13.8

# The pinned dependencies, installed by uv (about 30 s on this machine, where pip takes about 60 s); pip does it if
# uv cannot (it then reads the machine's pip configuration, such as local wheel folders, which uv ignores).
# Compiled to bytecode at install, as pip does: where PYTHONDONTWRITEBYTECODE is set (these machines set it), every
# process would otherwise compile each module it imports, every time (importing great_expectations 11 s instead of
# 5 s, loading the Dagster definitions 15 s instead of 7 s: the test suite, every run and every `dagster` command).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	( $(BIN)/pip install --quiet uv==$(UV_VERSION) && \
	  $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c requirements.lock -e '.[dev]' ) || \
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)
	@mkdir -p $(DAGSTER_HOME)
	@cmp -s dagster.yaml $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: setup
	$(BIN)/python -m pipelines.demo run --members $(MEMBERS) --seed $(SEED)

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

dev: setup
	$(BIN)/dagster dev -m pipelines.definitions

bench: setup
	$(BIN)/python -m pipelines.bench $(BENCH_ARGS)

# Kill the nightly at 20 moments and after each push-back commit, re-run, compare (report: .crash/report.md).
crash: setup
	$(BIN)/python -m pipelines.crash $(CRASH_ARGS)

clean:
	rm -rf data .dagster_home
