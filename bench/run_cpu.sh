#!/usr/bin/env bash
# The CPU benchmark set, what `make bench` runs (a few minutes on 2 cores): bottleneck-mask train
# step, data preparation, trace generation. Each script prints a markdown table and writes
# build/bench/<name>.json; progress bars and library warnings go to build/bench/<name>.log.
#
#   bash bench/run_cpu.sh            (PY=path/to/python to choose the interpreter; default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
    TOKENIZERS_PARALLELISM=false
# OpenMP threads sleep while they wait: on a shared machine, spinning threads wait on descheduled
# peers and one tiny train step swings from 0.05 s to 3 s (measured; see bench/README.md)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
mkdir -p build/bench
start=$(date +%s)
for name in mask_step dataprep tracegen; do
    log=build/bench/$name.log
    echo "== bench/$name.py (progress and warnings: $log)"
    if ! "$PY" "bench/$name.py" 2>"$log"; then
        tail -n 25 "$log" >&2
        echo "bench/$name.py failed; full log: $log" >&2
        exit 1
    fi
done
echo
echo "CPU bench set done in $(( $(date +%s) - start )) s; figures: build/bench/{mask_step,dataprep,tracegen}.json"
