# histo_exp: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

LOCK := requirements-lock.txt

# A new .venv from the lock: pinned pip and build tools first, then the package with exactly the locked versions
# (no build isolation, so the locked setuptools builds it), then a check that nothing else got in.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	@echo "installing histo_exp and the versions of $(LOCK) into $(VENV) (log: $(VENV)/install.log)"
	@{ $(BIN)/pip install -c $(LOCK) pip setuptools wheel \
		&& $(BIN)/pip install -c $(LOCK) --no-build-isolation -e '.[dev]'; } > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; exit 1; }
	$(BIN)/python scripts/lock.py check $(LOCK)
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with its test tools, at the versions of requirements-lock.txt

lock: ## refresh requirements-lock.txt: pip's newest versions within pyproject.toml's ranges (then make test, commit)
	$(PYTHON) scripts/lock.py write $(LOCK)

run: $(STAMP) ## run the default experiment (synthetic data, Bayesian search, MLflow)
	$(BIN)/python -m histo_exp $(ARGS)

test: $(STAMP) browser ## run the whole test suite (what CI runs) [PYTEST_ARGS=...]
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## the unit and cli tiers (no whole search, no server), for the inner loop [PYTEST_ARGS=...]
	$(BIN)/python -m pytest tests/unit tests/cli $(PYTEST_ARGS)

browser: ## install Debian's chromium for the MLflow UI browser test (if missing)
	scripts/install-browser.sh

screenshot: $(STAMP) browser ## refresh docs/mlflow-ui.png (the README's MLflow UI picture) from the browser test
	HISTO_EXP_SCREENSHOT=$(CURDIR)/docs/mlflow-ui.png $(BIN)/python -m pytest tests/e2e/test_server.py -k ui

# mutmut copies the package's .py files into mutants/, not the conf/ link the tests compose configs from.
mutation: $(STAMP) ## mutation testing of the code that computes results (mutmut, [tool.mutmut]; not in CI: see docs/development.md) [ARGS=...]
	mkdir -p mutants/histo_exp && ln -sfn ../conf mutants/histo_exp/conf
	$(BIN)/mutmut run $(ARGS)
	$(BIN)/mutmut results

lint: $(STAMP) ## static checks (ruff)
	$(BIN)/ruff check histo_exp tests bench scripts

prepare: $(STAMP) ## index and cache a dataset only: make prepare ARGS="data=idc data.root=/path"
	$(BIN)/python -m histo_exp.prepare $(ARGS)

SAMPLE ?= ../shared/data/idc-mini
bench: $(STAMP) ## ingest and training benchmarks on a full-size IDC tree, copies of $(SAMPLE) if there, else synthetic (writes bench/results.md)
	$(BIN)/python bench/run.py $(if $(wildcard $(SAMPLE)),--from $(SAMPLE))

bench-gpu: $(STAMP) ## training speed against the device's compute ceiling, Keras on JAX (bench/gpu.py) [ARGS="--size small --write"]
	KERAS_BACKEND=jax $(BIN)/python bench/gpu.py $(ARGS)

bench-quality: $(STAMP) ## leave-patients-out quality on ../shared/data/idc-mini, row by row, resumable (writes bench/quality.md) [ARGS="--rows NAME ..."]
	$(BIN)/python bench/quality.py $(ARGS)

search-distributed: $(STAMP) ## a KerasTuner chief and WORKERS (2) workers on loopback sharing one search [ARGS=overrides DIR=folder GPUS=0,1]
	$(BIN)/python -m histo_exp.launch --workers $(WORKERS) $(if $(DIR),--dir $(DIR)) $(if $(GPUS),--gpus $(GPUS)) $(ARGS)

server: $(STAMP) ## MLflow tracking server (SQLite + local artifacts) on $(HOST):$(PORT); log to it with logger.tracking_uri=http://$(HOST):$(PORT)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlruns/server.db \
		--artifacts-destination $(CURDIR)/mlruns/server-artifacts --host $(HOST) --port $(PORT)

ui: $(STAMP) ## open the MLflow UI on the store that runs from this folder log to (logger.tracking_uri)
	$(BIN)/mlflow ui --backend-store-uri "$$($(BIN)/python -m histo_exp --cfg job --resolve --package logger \
		| sed -n 's/^tracking_uri: //p')" --host $(HOST) --port $(PORT)

clean: ## remove run outputs and the local MLflow store (keeps .venv and the data cache)
	rm -rf outputs multirun mlruns

.PHONY: help install lock mutation run test test-fast browser screenshot lint prepare bench bench-gpu search-distributed server ui clean
