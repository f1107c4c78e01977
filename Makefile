.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

install: $(PY) ## create .venv and install descent with its dev extra
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'

train: ## train with the default config (MNIST, SGD, B=64)
	$(PY) src/train.py

test: ## run the test suite (offline)
	$(PY) -m pytest tests

lint: ## ruff check and format check
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests $(wildcard bench)

tensorboard: ## serve logs/ with TensorBoard
	$(VENV)/bin/tensorboard --logdir logs

.PHONY: help install train test lint tensorboard
