# The two entry points of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs with pip and constraints.txt; the stamp file
# makes a second run install nothing unless pyproject.toml or constraints.txt changed.
PYTHON ?= python3
# Worker processes for `make demo` (its time in the README was measured with 2 on 2 cores).
WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.toroid-installed

.PHONY: demo test lint data setup bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip -c constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[datasets,test,dev]'
	touch $(STAMP)

setup: $(STAMP)

data:
	@scripts/setup-data.sh

demo: setup data
	$(BIN)/toroid study run --preset default --out runs/study-default --workers $(WORKERS)

test: setup data
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

bench: setup data
	$(BIN)/python benchmarks/train.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
