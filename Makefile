# arhub: two set-up commands, `make demo` and `make test`. Both create .venv when it is
# missing and (re)install the project only when pyproject.toml is newer than the stamp.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.arhub-installed
# Tests run on 2 xdist workers: the fixtures isolate PostgreSQL (one database per
# worker), Redis (one leased db number per worker) and var dirs. Override with
# `make test PYTEST_ARGS=` for a serial run, or add -k / -x etc.
PYTEST_ARGS ?= -n 2
# Benchmarks: none run unless named: `make bench BENCH="tests.integration.bench_soap connector 10000"`.
BENCH ?=

.PHONY: demo test bench lint check-system install clean-venv

check-system:
	@scripts/check-system.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | check-system $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

demo: check-system $(STAMP)
	$(BIN)/arhub demo

test: check-system $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests/

bench: check-system $(STAMP)
	@if [ -z "$(BENCH)" ]; then \
	    echo "make bench: nothing heavy runs by default. Benchmarks (tests/**/bench_*.py):"; \
	    find tests -name 'bench_*.py' | sed 's|/|.|g; s|\.py$$||; s|^|  make bench BENCH="|; s|$$| <args>"|'; \
	    echo "Each module's docstring lists its arguments."; \
	else \
	    $(BIN)/python -m $(BENCH); \
	fi

lint: $(STAMP)
	$(BIN)/python -m compileall -q middleware connectors console jobs tests
	@if $(BIN)/python -m ruff --version >/dev/null 2>&1; then $(BIN)/python -m ruff check .; \
	 else echo "ruff not installed; compiled only (pip install ruff for a full lint)"; fi

clean-venv:
	rm -rf $(VENV)
