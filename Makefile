# `make bench`, `make demo` and `make test` create a local virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: bench demo test clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[test]"
	touch $@

# The main job: Piggyback against PackNet and the baselines on the offline
# default stream (seed 0; the figures in BENCHMARKS.md use --seeds 0 1 2).
bench: $(VENV)/.installed
	$(VENV)/bin/piggyback-bench --config benchmarks/configs/offline_default.json --seeds 0 --out runs/bench

demo: $(VENV)/.installed
	$(PY) -m piggyback_avalanche.app.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
