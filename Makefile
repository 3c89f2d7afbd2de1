# tierhpo: `make repro` runs the whole pipeline, `make test` runs the tests.
# Both create the virtual environment first if it is missing (or out of date).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help env repro test test-fast lint bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

env: $(STAMP) ## Create/update the virtual environment (.venv) from constraints.txt

repro: env ## Run the main job: restore or rebuild data/raw, then dvc repro (PROFILE=gpu: the GPU profile)
ifdef PROFILE
	cp profiles/$(PROFILE).yaml params.yaml
endif
	$(BIN)/tierhpo ingest --ensure
	$(BIN)/dvc repro

test: env ## Run every test tier (fast, slow, postgres)
	$(BIN)/pytest

test-fast: env ## Run only the fast tier (< 3 minutes)
	$(BIN)/pytest -m "not slow and not postgres"

lint: env ## Ruff lint
	$(BIN)/ruff check .

bench: env ## Run the benchmarks and rewrite BENCHMARKS.md
	$(BIN)/python -m benchmarks
