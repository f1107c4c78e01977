.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

install: $(PY) ## create .venv and install descent with its dev, optuna, slurm, mlflow and wandb extras
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,optuna,slurm,mlflow,wandb]'
	$(PY) -m pip check

# Offline, Fashion-MNIST comes from Debian's package; online, torchvision downloads it at the first run.
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
APT_GET ?= apt-get
data: ## Fashion-MNIST for an offline machine: Debian's dataset-fashion-mnist (installed as root), or the command
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then \
		echo "Fashion-MNIST is there"; \
	elif command -v $(APT_GET) >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		$(APT_GET) install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
		|| ($(APT_GET) update -qq && $(APT_GET) install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "could not install it: with network, torchvision downloads Fashion-MNIST at the first run"; \
	else \
		echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (Debian, Ubuntu), or train once with network access (torchvision downloads it)"; \
	fi

train: data ## train with the default config (Fashion-MNIST, SGD, B=64, 10 epochs)
	$(PY) src/train.py

test: ## run the test suite (offline)
	$(PY) -m pytest tests -n auto --dist load --maxschedchunk 1

test-fast: ## the suite without the slow end-to-end runs (no DDP, browser or nested pytest): for the edit-run loop
	$(PY) -m pytest tests -n auto --dist load --maxschedchunk 1 -m "not slow"

lint: ## ruff check and format check
	$(VENV)/bin/ruff check src tests $(wildcard bench)
	$(VENV)/bin/ruff format --check src tests $(wildcard bench)

SWEEP ?= $(lastword $(sort $(wildcard logs/train/multiruns/*)))
report: ## figure and table of a sweep: make report [SWEEP=logs/train/multiruns/<time>] (default: the latest)
	@if [ -z "$(SWEEP)" ]; then echo "error: no sweep in logs/train/multiruns/ yet: run one first, e.g. python src/train.py -m optimizer=gd,sgd, or make study" >&2; exit 2; fi
	$(PY) src/report.py $(SWEEP)

study: ## the GD-versus-SGD study on Fashion-MNIST, then its report
	$(PY) src/train.py -m experiment=gd_vs_sgd
	$(MAKE) report

bench: ## epoch speed against a plain PyTorch loop and the torchvision pipeline
	$(PY) bench/epoch_speed.py

bench-gd: ## one GD epoch by chunk size against a plain full-batch step: time and peak memory
	$(PY) bench/gd_chunks.py

bench-search: ## a 30-trial search with and without pruning on a Fashion-MNIST subset (docs/runs.md's table)
	$(PY) bench/search_pruning.py

bench-imagenet: ## full-size synthetic Imagenet32 (3.9 GB, made once): data path vs training step, peak RSS
	$(PY) bench/imagenet_data.py

tensorboard: ## serve logs/ with TensorBoard
	$(VENV)/bin/tensorboard --logdir logs


.PHONY: help install data train test test-fast lint report study bench bench-gd bench-search bench-imagenet tensorboard
