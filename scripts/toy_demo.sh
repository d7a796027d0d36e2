#!/usr/bin/env bash
# `make toy-demo`: the toy study (docs/toy_study.md) at its smallest: one seed, T=1. Builds a random
# tiny Qwen3 and the S4 state-tracking data (k = 8 swaps), trains the verbal-CoT base model and the
# no-CoT baseline (axolotl_configs/toy_sft.yml), runs one Abstract-CoT round from the verbal base
# through orchestrate.py (configs/runs/toy.yml), evaluates each model on the 256 held-out problems
# with lm-eval (abscot_plugin.eval.eval_cli), and prints the measured table. Everything lands in
# build/toy_demo/ (rerunning resumes: finished steps are skipped; delete the folder to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=build/toy_demo
start=$(date +%s)
"$PYTHON" studies/toy/study.py --out "$OUT" --seeds 0 --cells one_pass --rounds 1 --no-oracle
cat <<MSG

toy demo finished in $(( $(date +%s) - start )) s: the table above was measured just now (one seed, one
round; the full study with seeds and ablations: docs/toy_study.md). Results in $OUT/:
  report/results.md, accuracy_vs_tokens.png   the table and the plot
  results/*.json       one file per evaluated model; eval/ lm-eval's results and per-sample logs
  runs/one_pass_s0/    the orchestrator's run folder (SUMMARY.md, traces, models, logs)
  logs/                one log per step
MSG
