.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

install: $(PY) ## create .venv and install descent with its dev, optuna and slurm extras
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,optuna,slurm]'

train: ## train with the default config (MNIST, SGD, B=64)
	$(PY) src/train.py

test: ## run the test suite (offline)
	$(PY) -m pytest tests

lint: ## ruff check and format check
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests $(wildcard bench)

SWEEP ?= $(lastword $(sort $(wildcard logs/train/multiruns/*)))
report: ## figure and table of a sweep: make report [SWEEP=logs/train/multiruns/<time>] (default: the latest)
	$(PY) src/report.py $(SWEEP)

study: ## the GD-versus-SGD study on Fashion-MNIST, then its report
	$(PY) src/train.py -m experiment=gd_vs_sgd
	$(MAKE) report

bench: ## epoch speed against a plain PyTorch loop and the torchvision pipeline
	$(PY) bench/epoch_speed.py

bench-gd: ## one GD epoch by chunk size against a plain full-batch step: time and peak memory
	$(PY) bench/gd_chunks.py

bench-imagenet: ## full-size synthetic Imagenet32 (3.9 GB, made once): data path vs training step, peak RSS
	$(PY) bench/imagenet_data.py

tensorboard: ## serve logs/ with TensorBoard
	$(VENV)/bin/tensorboard --logdir logs

.PHONY: help install train test lint report study bench bench-gd bench-imagenet tensorboard
