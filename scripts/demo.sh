#!/usr/bin/env bash
# `make demo`: build the tiny fixtures if missing, then run the T=2 Abstract-CoT warm-up on them on
# CPU with the transformers backend (configs/runs/tiny.yml): the base model's verbal-CoT
# baseline, two policy-iteration rounds, and the warm-up model's two-stage MATH-500 evaluation.
# Ends with the evaluation table. Rerunning resumes: finished stages are not redone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false
CONFIG=configs/runs/tiny.yml
RUN_DIR=build/orchestrate/tiny
if [[ ! -f build/tiny/config.json ]]; then
    "$PYTHON" -m abscot_plugin.testing.fixtures tiny build/tiny
fi
start=$(date +%s)
"$PYTHON" orchestrate.py "$CONFIG"
echo
sed -n '/^|/p' "$RUN_DIR/eval/report.md"
cat <<MSG

demo finished in $(( $(date +%s) - start )) s (a tiny random model: the numbers check the pipeline,
they mean nothing). Results in $RUN_DIR/:
  SUMMARY.md           stages, timings, losses, trace statistics, the evaluation table
  eval/report.md, .png the evaluation table and the accuracy-vs-tokens plot (reference rows: docs/method.md)
  eval/{base,final}/   lm-eval results and per-sample logs (trace, answer, extracted answer)
  plots/               loss and learning-rate curve of every training stage
  round2/phase_b/model the warm-up model; round*/phase_*/traces.jsonl the on-policy traces
  logs/                one log per stage
MSG
