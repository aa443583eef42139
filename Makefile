# The two commands a new machine needs: `make demo` and `make test`.
# Both create (or reuse) .venv and install the project with its dev extras into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint typecheck schemas pytest demo broker bench clean

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

pytest: venv
	$(BIN)/python -m pytest -n 2 --dist loadfile

test: lint typecheck schemas pytest

demo: venv
	$(BIN)/streamguard demo

broker: venv
	$(BIN)/streamguard broker

bench: venv
	$(BIN)/python benchmarks/consume.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
