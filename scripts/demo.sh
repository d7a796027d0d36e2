#!/usr/bin/env bash
# `make demo`: build the tiny fixtures if missing, then run the T=2 Abstract-CoT warm-up on them
# on CPU with the transformers generation backend (configs/runs/tiny.yml), and say where the
# results are. Rerunning resumes: finished stages are not redone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false
CONFIG=configs/runs/tiny.yml
RUN_DIR=build/orchestrate/tiny
if [[ ! -f build/tiny/config.json ]]; then
    "$PYTHON" -m abscot_plugin.fixtures tiny build/tiny
fi
start=$(date +%s)
"$PYTHON" orchestrate.py "$CONFIG"
cat <<MSG

demo finished in $(( $(date +%s) - start )) s. Results in $RUN_DIR/:
  SUMMARY.md           stages, timings, losses, trace statistics
  plots/               loss and learning-rate curve of every training stage
  round2/phase_b/model the warm-up model (tiny, random: a pipeline check, not a useful model)
  round*/phase_*/traces.jsonl   on-policy abstract traces; logs/ one log per stage
MSG
