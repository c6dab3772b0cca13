# Mirror - every target installs what it needs into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_CUSTOMERS ?= 3000
# 180 days: a 60-day churn horizon needs history before the cut (with 120, LR beat LightGBM)
DEMO_DAYS ?= 180
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlruns/mlflow.db

.PHONY: help install demo data features train serve notebooks test test-slow lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install Mirror with its dev tools

# the demo data end today (UTC) unless DEMO_END=YYYY-MM-DD pins them, so the service's scores are current
DEMO_END ?=

data: $(STAMP) ## Generate the synthetic omnichannel demo data and catalog (ending today)
	$(VENV)/bin/mirror generate --customers $(DEMO_CUSTOMERS) --days $(DEMO_DAYS) --seed 7 --out $(DEMO_DIR) \
		$(if $(DEMO_END),--end $(DEMO_END))

features: data ## Build point-in-time profile features for the demo data
	$(VENV)/bin/mirror features --events $(DEMO_DIR)/events.parquet --out $(DEMO_DIR)/features

train: data ## Train all three model families and register champions in MLflow
	$(VENV)/bin/mirror train all --events $(DEMO_DIR)/events.parquet --experiment mirror-demo

serve: $(STAMP) ## Serve the champions on localhost:3000 (MIRROR_PORT to change)
	$(VENV)/bin/mirror serve --store $(DEMO_DIR)/store.db --events $(DEMO_DIR)/events.parquet \
		--catalog $(DEMO_DIR)/items.parquet --examples

demo: features train serve ## Set up everything on a fresh machine and run the service with example calls

# JupyterLab from .venv, so the kernel is the project's environment and reads the same MLflow store as
# `make train`; JUPYTER_ARGS=--no-browser on a headless machine (or to pick --port, --ip).
JUPYTER_ARGS ?=
notebooks: $(STAMP) ## Open JupyterLab on notebooks/ with the project's environment and MLflow store
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(JUPYTER_ARGS)

test: $(STAMP) ## The default suite (fast, synthetic data)
	$(PY) -m pytest -q

test-slow: $(STAMP) ## Slow and real-data tests (needs ../shared/data)
	$(PY) -m pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then echo "no slow tests selected"; exit 0; fi; exit $$rc

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check features training serving tests benchmarks research

bench: $(STAMP) ## All benchmarks; figures go to benchmarks/RESULTS.md
	$(PY) benchmarks/features.py
	$(PY) benchmarks/accuracy.py
	$(PY) benchmarks/serving.py

clean: ## Remove generated data and the MLflow store (keeps .venv)
	rm -rf data mlruns
