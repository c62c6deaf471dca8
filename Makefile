# letmesh: `make demo` runs a mesh on this machine with sample traffic; `make test` runs the suite.
# Both create .venv on first use and install what they need (torch pinned to the CPU build 2.13.0).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.letmesh-installed

.PHONY: setup demo test up bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(PY) -m letmesh demo

up: setup
	$(PY) -m letmesh up

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2

bench: setup
	$(PY) benchmarks/overhead.py --quick

clean:
	rm -rf .letmesh benchmarks/results .pytest_cache
