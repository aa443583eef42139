# The two commands a new machine needs: `make demo` and `make test`.
# Both create (or reuse) .venv and install the project with its dev extras into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make bench` runs in a venv of its own: the peer frameworks' pins (quixstreams caps
# confluent-kafka and pydantic) must not change the versions `make test` runs with.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

.PHONY: venv test lint typecheck schemas pytest demo broker bench bench-consume clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

LINTED := streamguard tests benchmarks $(wildcard examples)

lint: venv
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: venv
	$(BIN)/mypy

schemas: venv
	$(BIN)/streamguard schema check

# Three workers on two cores: the tests mostly wait on the broker (group joins, session
# timeouts), not the CPU. Measured on a 2-core VM: 15.5 min with -n 2, 10.6 with -n 3.
pytest: venv
	$(BIN)/python -m pytest -n 3 --dist loadfile

test: lint typecheck schemas pytest

demo: venv
	$(BIN)/streamguard demo

broker: venv
	$(BIN)/streamguard broker

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# streamguard next to the other Python Kafka frameworks; writes benchmarks/results.json,
# the table in docs/benchmarks.md and docs/img/benchmarks.png. e.g. BENCH_ARGS="--rounds 5"
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/peers.py $(BENCH_ARGS)

# A ConsumerService against the hand-written loop alone, on events with schema headers.
bench-consume: venv
	$(BIN)/python benchmarks/consume.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
