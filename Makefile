# onnxbuild developer commands. `make build` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# `make sweep SWEEP=opsets ARGS="model=tiny_cnn input=image32"`: a conf/sweep preset.
SWEEP ?= opsets
# Extras installed by `make setup`: dev tools and the joblib/submitit launchers the sweep tests use.
EXTRAS ?= dev,cluster

.PHONY: setup build test test-fast lint bench sweep release clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	touch $(STAMP)

build: $(STAMP)
	$(PY) -m onnxbuild $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check onnxbuild tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_resnet50.py
	$(PY) benchmarks/bench_cache.py

release: $(STAMP)
	$(PY) -m onnxbuild +release=default $(ARGS)

sweep: $(STAMP)
	$(PY) -m onnxbuild +sweep=$(SWEEP) $(ARGS)

clean:
	rm -rf outputs .pytest_cache .ruff_cache
