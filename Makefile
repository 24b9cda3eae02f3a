PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-slow test-all lint bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

STAMP := $(VENV)/.installed

install: $(STAMP)

# An editable install: only a change to pyproject.toml (dependencies, entry points, package
# list) needs pip again; source changes are picked up as they are.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2

# The long end-to-end runs (several processes each, or meta-training to a threshold).
test-slow: install
	$(BIN)/python -m pytest -q -n 2 -m slow

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
