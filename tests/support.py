"""Helpers shared by the test modules: the offline environment of subprocesses, axolotl runs of
the tiny configs, the vLLM environment (``.venv-vllm``) and its run settings, JSONL reading, the
dataset strategies as axolotl builds them. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_READY = ROOT / ".venv-vllm" / ".abscot-vllm-installed"  # written last by the setup script
VLLM_SKIP = "no vLLM environment at .venv-vllm (create it with: make venv-vllm)"


def offline_env(**extra: str) -> dict[str, str]:
    """The environment every subprocess of these tests runs with (offline, no telemetry)."""
    env = dict(os.environ)
    env.update(
        AXOLOTL_DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        VLLM_CPU_KVCACHE_SPACE="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run_axolotl(config: dict, tmp: Path, name: str, command: str = "train", **env: str) -> subprocess.CompletedProcess:
    """Write ``config`` to ``tmp/<name>.yml`` and run ``axolotl <command>`` on it from the
    repository root, with tests/ on PYTHONPATH (for the probe plugins of axolotl_probes.py) and
    ``env`` added; stdout and stderr are also kept in ``tmp/<name>.log``."""
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    python_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "axolotl"), command, str(path)],
        cwd=ROOT,
        env=offline_env(PYTHONPATH=python_path, **env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    (tmp / f"{name}.log").write_text(proc.stdout + proc.stderr)
    return proc


def tiny_config(phase: str, base: Path, out: Path, tmp: Path, **extra) -> dict:
    """axolotl_configs/tiny_phase_<phase>.yml with the model, data, output and prepared-data
    paths pointed at ``base``, the shipped tiny data and ``tmp``; ``extra`` keys override."""
    from abscot_plugin.testing.fixtures import data_path

    cfg = yaml.safe_load((ROOT / "axolotl_configs" / f"tiny_phase_{phase}.yml").read_text())
    cfg.update(base_model=str(base), output_dir=str(out), dataset_prepared_path=str(tmp / f"prep_{phase}"))
    cfg["datasets"][0]["path"] = str(data_path("dolci_tiny.jsonl"))
    cfg.update(extra)
    return cfg


def run_vllm(args: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    """Run ``args`` with the vLLM environment's interpreter, from the repository root."""
    if not VLLM_READY.exists():
        pytest.skip(VLLM_SKIP)
    return subprocess.run(
        [str(VLLM_PYTHON), *args],
        cwd=ROOT,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def make_cfg(**overrides):
    """An axolotl config (``DictDefault``) with the abscot keys a strategy reads."""
    from axolotl.utils.dict import DictDefault

    base = dict(
        sequence_len=512,
        abscot_num_symbols=64,
        abscot_m_max=128,
        abscot_cot_keep="end",
        abscot_trace_seed=0,
        abscot_skip_bad_rows=False,
        abscot_id_field="id",
    )
    base.update(overrides)
    return DictDefault(base)


def strategy(tok, phase=None, **cfg):
    """The dataset strategy of ``phase`` (default Phase A) as axolotl loads it, from its dataset
    type (needs ``plugin_active``)."""
    import importlib

    from abscot_plugin.core.choices import Phase

    module = importlib.import_module((phase or Phase.A).dataset_type)
    return module.load(tok, make_cfg(**cfg), {})


def batch_of(rows: list[dict]) -> dict[str, list]:
    """Rows as the column batch a strategy's ``tokenize_prompt`` takes."""
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}


VLLM_SAMPLED = [dict(m_min=3, m_max=12, temperature=1.5), dict(m_min=5, m_max=5)]
VLLM_GREEDY = dict(m_min=2, m_max=6, temperature=0.0)
VLLM_GENERATE = dict(limit=12, max_model_len=256, m_min=4, m_max=16)
VLLM_ROLLOUT = dict(
    problems=["What is $2+3$?", "Compute $7\\times 6$."],
    k=3,
    m_min=2,
    m_max=8,
    max_completion_length=30,
)
