# The two commands a newcomer runs: `make bench` (the benchmark suite) and `make test` (the test suite).
# Each creates .venv when missing and installs the project with what the target needs; the stamp files make a
# second run skip the install until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BENCH_ARGS ?=

.PHONY: test bench lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

# Two pytest workers (pytest-xdist): most of the suite's time is XLA compiling, one test at a time per process;
# more workers than cores would only fight over them (the kernel's calls spin on all cores). tests/conftest.py
# also has XLA compile without LLVM's optimisations. On a 2-core AMD EPYC: 877 s in one process, 636 s in two,
# 408 s in two with quick compiles; 441-447 s since the kernel's checks also run with AVX-512's tiles (session 14).
test: $(VENV)/.installed-test
	$(PY) -m pytest -n 2

bench: $(VENV)/.installed-bench
	$(PY) -m lstm_jax bench $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) results .pytest_cache
