# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev run test lint typecheck browser clients-js litellm mutants conformance conformance-suite bench bench-costs bench-security bench-compare bench-nodes bench-chaos clean

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

# `make run HOST=… PORT=… CONFIG=…`: each flag only when given on make's command line, so
# that otherwise the config file and TOKENWIRE_SERVER__* decide (and a HOST or PORT that a
# shell exports for its own reasons does not).
flag = $(if $(filter command line,$(origin $(1))),$(2) '$($(1))')

run: install
	$(BIN)/tokenwire serve $(call flag,HOST,--host) $(call flag,PORT,--port) $(call flag,CONFIG,--config)

lint: dev
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools

typecheck: dev
	$(BIN)/mypy

# Four xdist workers: the suite mostly waits (timers, sockets, subprocesses), so twice
# as many as 2 cores still pays. `loadgroup` keeps a module that shares one llama.cpp
# server or one loaded model on one worker (`xdist_group`) and spreads the rest test by
# test. Here rather than in pytest's addopts, so that the conformance suite keeps its
# plain serial run. Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (as in
# many container images): otherwise each worker compiles the tests and the package, and
# pytest rewrites its plugins' asserts, on every run (about 14 s of CPU per worker
# against 8 s), and so does every `tokenwire` process a test starts.
TEST_WORKERS ?= 4
test: dev lint typecheck
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The browser tests drive Debian's chromium through Playwright (whose own browser
# download cannot work without the internet); installed once, as root, when missing.
CHROMIUM := /usr/bin/chromium

browser: $(CHROMIUM)

$(CHROMIUM):
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

test: browser

# The JavaScript clients that tests/clients runs against a real server, at the versions
# pinned in their package.json. No lockfile is kept: one would record where each package
# was downloaded from. Done once; again only when package.json changes.
CLIENTS_JS := tests/clients/js

clients-js: $(CLIENTS_JS)/node_modules/.installed

$(CLIENTS_JS)/node_modules/.installed: $(CLIENTS_JS)/package.json
	cd $(CLIENTS_JS) && npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

test: clients-js

# LiteLLM's proxy, a third-party upstream in the tool-call tests, in a venv of its own:
# its pins (openai, httpx, uvicorn) differ from tokenwire's. FACTS.md: 1.108.7 is the
# newest whose proxy extra installs here.
LITELLM_VENV := .venv-litellm

litellm: $(LITELLM_VENV)/.installed

$(LITELLM_VENV)/.installed:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==1.108.7'
	touch $@

test: litellm

# The black-box suite of the wire contract is kept outside this repository.
CONFORMANCE ?= ../shared/conformance

conformance: conformance-suite dev
	TOKENWIRE_ROOT=$(CURDIR) $(BIN)/python -m pytest -q -p no:cacheprovider $(CONFORMANCE)

conformance-suite:
	@test -d '$(CONFORMANCE)' || { \
	  echo "make conformance: no conformance suite at $(CONFORMANCE)." >&2; \
	  echo "  It is the black-box suite of the wire contract, kept outside this repository;" >&2; \
	  echo "  give its path: make conformance CONFORMANCE=/path/to/conformance" >&2; \
	  echo "  It starts servers from this checkout (TOKENWIRE_ROOT=$(CURDIR), set by make)," >&2; \
	  echo "  or tests a running one when TOKENWIRE_URL=http://HOST:PORT is set." >&2; \
	  exit 2; }

# Realistic one-line bugs, each applied in a scratch copy, that their tests must catch
# (tools/mutants.py). MUTANTS="id ..." runs some; MUTANTS_FLAGS=--all runs the whole suite.
mutants: dev
	$(BIN)/python tools/mutants.py $(MUTANTS_FLAGS) $(MUTANTS)

# Every figure of issue 26 against its reference, in one run (about 25 minutes): a table
# printed, JSON in bench/results/. BENCH_FLAGS="--quick" runs toy sizes, "--write-docs"
# puts the tables in docs/benchmarks.md, "--only ceiling,capacity" runs some parts.
bench: install litellm
	$(BIN)/python bench/suite.py $(BENCH_FLAGS)

# Server instructions per token and per request (callgrind: the same on a busy machine),
# compared with the last release recorded in bench/costs.json. A few minutes.
bench-costs: install
	$(BIN)/python bench/costs.py

# What authentication and limit checks cost per call and per request.
bench-security: install
	$(BIN)/python bench/security.py

# Several nodes on a private redis-server: Redis against memory on one node, 1 against 2
# workers, Redis memory per stream (a few minutes).
bench-nodes: install
	$(BIN)/python bench/nodes.py

# Three nodes on Redis under drops, cancels, reloads, resumes elsewhere, a node's SIGKILL
# and a Redis restart; every event checked (about two minutes).
bench-chaos: install
	$(BIN)/python bench/chaos.py

# The per-token cost of this working tree against BEFORE (a git revision), in one run.
BEFORE ?= cd1de97
bench-compare: install
	$(BIN)/python bench/before_after.py --before $(BEFORE) --clients 1 100 1000 --tokens 200
	$(BIN)/python bench/before_after.py --before $(BEFORE) --instructions --clients 10 --tokens 500

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
