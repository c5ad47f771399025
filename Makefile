# Every target creates .venv on first use: torch==2.13.0 (CPU build) first, then the project.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gradtui-installed
PYTHON ?= python3

.PHONY: demo test lint check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gradtui demo

test: $(STAMP)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check gradtui tests benchmarks demos
	$(VENV)/bin/mypy

check: lint test

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/viewer.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
