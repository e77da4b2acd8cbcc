# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install dev run test lint typecheck conformance bench bench-security bench-compare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

run: install
	$(BIN)/tokenwire serve --host $(HOST) --port $(PORT)

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: dev
	$(BIN)/mypy

# Four xdist workers: the suite mostly waits (timers, sockets, subprocesses), so twice
# as many as 2 cores still pays. `loadgroup` keeps a module that shares one llama.cpp
# server or one loaded model on one worker (`xdist_group`) and spreads the rest test by
# test. Here rather than in pytest's addopts, so that the conformance suite keeps its
# plain serial run.
TEST_WORKERS ?= 4
test: dev lint typecheck
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

conformance: install dev
	TOKENWIRE_ROOT=$(CURDIR) $(BIN)/python -m pytest -q -p no:cacheprovider ../shared/conformance

bench: install
	$(BIN)/python bench/ws_load.py --clients 1 100 1000

# What authentication and limit checks cost per call and per request.
bench-security: install
	$(BIN)/python bench/security.py

# The per-token cost of this working tree against BEFORE (a git revision), in one run.
BEFORE ?= cd1de97
bench-compare: install
	$(BIN)/python bench/before_after.py --before $(BEFORE) --clients 1 100 1000 --tokens 200
	$(BIN)/python bench/before_after.py --before $(BEFORE) --instructions --clients 10 --tokens 500

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
