# `make test`: create .venv, install vmae2 with its test dependencies, run the test suite.
# `make test-demo`: the recipe runs end to end (the shipped demos, the small-data recipe; about 12 minutes), left
# out of `make test`.
# `make train`: create .venv and run the main job: `python -m vmae2.train` (the demo pretraining run).
# `make finetune`: the fine-tuning demo, `python -m vmae2.finetune` (pretrain, fine-tune, multi-view test).
# TORCH_SPEC picks the torch build: the default resolves to the CPU wheel on CPU machines;
# on a GPU cluster use e.g. `make test TORCH_SPEC="torch --index-url <your CUDA wheel index>"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Triton runs the kernels on GPUs and, through its interpreter, in the CPU tests.
TRITON_SPEC ?= triton==3.8.0
# timm as the official code pins it; its files are loaded one by one in tests (import timm needs torchvision).
TIMM_SPEC ?= timm==0.4.12
# Two pytest-xdist workers; tests/conftest.py gives each (and what its tests start) one intra-op thread.
PYTEST_ARGS ?= -q -n 2 --dist worksteal
BIN := $(VENV)/bin
STAMP := $(VENV)/.vmae2-installed
# The minimal install: torch (CPU) + vmae2[test] only: no Triton, DALI, flash-attn, xformers, matplotlib or native
# build.
MINIMAL_VENV ?= .venv-minimal
MINIMAL_STAMP := $(MINIMAL_VENV)/.vmae2-installed

.PHONY: test test-demo smoke-minimal test-floor train finetune bench install clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" "$(TRITON_SPEC)"
	$(BIN)/pip install -q -e ".[test,bench,dali,plot,hf]"
	$(BIN)/pip install -q --no-deps "$(TIMM_SPEC)"  # the official augmentations' source, read by oracle/
	-$(BIN)/python -m vmae2_kernels.build  # the native CPU ops; a failed build only loses that backend
	touch $(STAMP)

install: $(STAMP)

$(MINIMAL_STAMP): pyproject.toml setup.py
	test -x $(MINIMAL_VENV)/bin/python || $(PYTHON) -m venv $(MINIMAL_VENV)
	$(MINIMAL_VENV)/bin/pip install -q "$(TORCH_SPEC)"
	$(MINIMAL_VENV)/bin/pip install -q -e ".[test]"
	touch $(MINIMAL_STAMP)

# The test suite, then the minimal-install smoke set. pytest exits 5 when it collects no tests: say so, do not fail.
test: $(STAMP) $(MINIMAL_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" || exit $$rc; }
	$(MAKE) --no-print-directory smoke-minimal

# The recipe runs, deselected from `make test` (pyproject's addopts: -m 'not demo'): the shipped pretraining demo
# (`make train` as shipped, about 5 minutes on 2 cores) beats half the flat-colour baseline; the shipped fine-tuning
# demo (`make finetune`, about 1 minute) beats chance on held-out clips; the small-data recipe (about 6 minutes) takes
# a messy folder from lists to features and beats chance on clips of another folder. DEMO_TESTS picks the files.
DEMO_TESTS ?= tests/test_train.py tests/test_finetune_cli.py tests/test_small_data.py
test-demo: $(STAMP)
	$(BIN)/python -m pytest -q -m demo $(DEMO_TESTS)

# Every entry point for a few steps in the minimal install (tests/minimal_install_smoke.py).
smoke-minimal: $(MINIMAL_STAMP)
	$(MINIMAL_VENV)/bin/python tests/minimal_install_smoke.py

# The version floors (torch 2.11, Triton 3.6: what the GPU image has) on the kernel tests, Triton's interpreter on
# CPU. Not part of `make test`: PyPI's torch 2.11 is a CUDA build (a ~5 GB venv). Triton <= 3.6's interpreter calls
# int() on 1-element arrays, an error since NumPy 2.4 (Triton 3.7 fixed it): hence numpy<2.4 here.
FLOOR_VENV ?= .venv-floor
FLOOR_TESTS ?= tests/test_kernels.py tests/test_op_validation.py tests/test_integration.py tests/test_loss.py \
	tests/test_launchers.py tests/test_linking_example.py tests/test_gpu_report.py
test-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q torch==2.11.0 triton==3.6.0 "numpy<2.4"
	$(FLOOR_VENV)/bin/pip install -q -e ".[test]"
	-VMAE2_BUILD_CUDA=0 VMAE2_EXT_DIR=$(FLOOR_VENV)/vmae2_ext $(FLOOR_VENV)/bin/python -m vmae2_kernels.build
	VMAE2_EXT_DIR=$(FLOOR_VENV)/vmae2_ext $(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# The embedded demo: a tiny model on generated videos for a few minutes; results in output/demo.
train: $(STAMP)
	$(BIN)/python -m vmae2.train

finetune: $(STAMP)
	$(BIN)/python -m vmae2.finetune

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks/ --benchmark-only -q

clean:
	rm -rf $(VENV) $(MINIMAL_VENV) $(FLOOR_VENV) .pytest_cache *.egg-info
