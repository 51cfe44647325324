# `make bench`, `make demo` and `make test` create a local virtual environment on first use;
# only the test targets add the test extra (pytest, ruff, mypy, build, timm, optuna).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bench demo test test-ray test-fast lint docs package-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -e ".[test]"
	touch $@

# The main job: Piggyback against PackNet and the baselines on the offline
# default stream (seed 0; the figures in BENCHMARKS.md use --seeds 0 1 2).
bench: $(VENV)/.installed
	$(VENV)/bin/piggyback-bench --config offline_default --seeds 0 --out runs/bench

demo: $(VENV)/.installed
	$(PY) -m piggyback_avalanche.app.demo

# Style and types, then every test but the Ray clusters' (what CI runs), naming the ten slowest.
test: lint
	$(PY) -m pytest -q --durations=10 -m "not ray"

# The runner and the ablations benchmark on real Ray clusters (a local instance; a head and a
# second node): about three minutes on 2 cores, kept out of `make test` to hold it within its
# time; CI runs both.
test-ray: $(VENV)/.installed-test
	$(PY) -m pytest -q -m ray

# The developer's loop: style, types and the tests not marked slow.
test-fast: lint
	$(PY) -m pytest -q -m "not slow"

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PY) -m pip install -e ".[docs]"
	touch $@

# The documentation (README, guide pages, BENCHMARKS.md, the API from the docstrings) as
# HTML in docs/_build/html; a warning fails it, as in CI.
docs: $(VENV)/.installed-docs
	$(PY) -m sphinx -b html -q -W --keep-going -c docs . docs/_build/html

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The wheel and sdist as a user installs them, run from outside the clone (CI runs it).
package-check: $(VENV)/.installed-test
	bash .ci/package-check

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
