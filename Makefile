# Two commands on a fresh machine: `make demo` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgeslm-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job on the builtin model; grows with the project (quantize, evaluate, choose, serve).
demo: setup
	$(VENV)/bin/edgeslm pull smollm2-135m-instruct gemma3-270m
	$(VENV)/bin/edgeslm list
	$(VENV)/bin/edgeslm show smollm2-135m-instruct
	$(VENV)/bin/edgeslm verify

lint: setup
	$(PY) -m ruff check edgeslm tests benchmarks
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/header_walk.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
