PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-all lint bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"

test: install
	$(BIN)/python -m pytest -q -n 2

test-all: install
	$(BIN)/python -m pytest -q -n 2 -m ""

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check lopt tasks tests scripts

bench: install
	$(BIN)/python scripts/bench_unf.py

demo: install
	$(BIN)/lopt-train experiment=demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
