"""Helpers shared by the test modules: the offline environment of subprocesses, the vLLM
environment (``.venv-vllm``) and its run settings, JSONL reading. Fixtures live in conftest.py."""

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
VLLM_SKIP = "no vLLM environment at .venv-vllm (create it with: make venv-vllm)"


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


VLLM_SAMPLED = [dict(m_min=3, m_max=12, temperature=1.5), dict(m_min=5, m_max=5)]
VLLM_GREEDY = dict(m_min=2, m_max=6, temperature=0.0)
VLLM_GENERATE = dict(limit=12, max_model_len=256, m_min=4, m_max=16)
