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


# Test modules that import these fixtures each get their own copy of the fixture (pytest binds
# fixtures per module); this cache makes the expensive ones run once per session all the same.
_SESSION: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_extended(tmp_path_factory) -> Path:
    """A tiny random Qwen3 whose tokenizer already has V_abs (what a merged round model is)."""
    from abscot_plugin.fixtures import build_tiny

    if "tiny_extended" not in _SESSION:
        _SESSION["tiny_extended"] = build_tiny(tmp_path_factory.mktemp("tiny_ext"), extend=True)
    return _SESSION["tiny_extended"]


VLLM_SAMPLED = [dict(m_min=3, m_max=12, temperature=1.5), dict(m_min=5, m_max=5)]
VLLM_GREEDY = dict(m_min=2, m_max=6, temperature=0.0)
VLLM_GENERATE = dict(limit=12, max_model_len=256, m_min=4, m_max=16)


@pytest.fixture(scope="session")
def vllm_run(tiny_extended, tmp_path_factory) -> dict:
    """One vLLM run (tests/_helpers_vllm_decode.py) shared by test_decode and test_generate:
    stage-1/2 decodes of the first five Dolci rows' Phase B prefixes, and the generate CLI's
    Phase A trace generation for VLLM_GENERATE rows. Returns the helper's result plus the
    request's ``prefixes`` and the trace file (``out``)."""
    from transformers import AutoTokenizer

    from abscot_plugin.fixtures import data_path
    from abscot_plugin.prompts import parse_chat_row
    from abscot_plugin.sequences import SequenceBuilder
    from abscot_plugin.vocab import AbstractVocab

    if not VLLM_READY.exists():
        pytest.skip(VLLM_SKIP)
    if "vllm_run" in _SESSION:
        return _SESSION["vllm_run"]
    tok = AutoTokenizer.from_pretrained(tiny_extended)
    builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, 64))
    rows = read_jsonl(data_path("dolci_tiny.jsonl"))[:5]
    prefixes = [builder.phase_b_prefix(parse_chat_row(r, r["id"]))[0] for r in rows]
    work = tmp_path_factory.mktemp("vllm")
    out = work / "traces.jsonl"
    request = {
        "prefixes": prefixes, "settings": VLLM_SAMPLED, "greedy_settings": VLLM_GREEDY, "answer_max_tokens": 5,
        "generate": {"data": str(data_path("dolci_tiny.jsonl")), "out": str(out), **VLLM_GENERATE},
    }
    (work / "request.json").write_text(json.dumps(request))
    proc = run_vllm(["tests/_helpers_vllm_decode.py", str(tiny_extended), str(work / "request.json"),
                     str(work / "result.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _SESSION["vllm_run"] = {**json.loads((work / "result.json").read_text()), "prefixes": prefixes, "out": out}
    return _SESSION["vllm_run"]
