"""lm-eval's command line with the abscot model classes registered first.

    python -m abscot_plugin.eval_cli --model abscot-hf --model_args pretrained=DIR \\
        --tasks math500_abscot --include_path eval_tasks [any other lm_eval flag]

Every argument goes to lm-eval's CLI unchanged. Stock ``lm_eval`` registers our models only when
a task is given as a YAML path (it imports ``eval_tasks/utils.py`` before building the model);
by task name, or for the groups, this entry point is needed.

:func:`evaluate` runs this entry point as a subprocess for the orchestrator's final stage (a
separate process, so that a GPU is released after evaluation and vLLM can run from its own
environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval_tasks"
Backend = Literal["hf", "vllm"]


def main(argv: list[str] | None = None) -> None:
    """Register ``abscot-hf``/``abscot-vllm``, then run ``lm_eval`` with ``argv`` (default: sys.argv)."""
    import abscot_plugin.lm_eval_models  # noqa: F401  (registers the model classes)
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


def _kv(values: dict[str, Any]) -> str:
    """lm-eval's ``key=value,key=value`` form."""
    for key, value in values.items():
        if "," in str(value) or "=" in str(value):
            raise ValueError(f"value of {key!r} contains ',' or '=', which lm-eval cannot parse: {value!r}")
    return ",".join(f"{key}={value}" for key, value in values.items())


def evaluate(
    model_dir: str | Path,
    tasks: list[str],
    out_dir: str | Path,
    backend: Backend = "hf",
    limit: int | None = None,
    data_overrides: dict[str, str] | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    batch_size: int = 16,
    python: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> Path:
    """Evaluate ``model_dir`` on ``tasks`` (names from eval_tasks/, e.g. ``["math500_abscot"]``)
    and return the path of the lm-eval results JSON written under ``out_dir``.

    ``data_overrides``: local files instead of the hub datasets, e.g. ``{"math500_file":
    "math500.jsonl", "gsm8k_file": "gsm8k.jsonl"}`` (passed as ``--metadata``). ``gen_kwargs``:
    overrides of the tasks' generation settings (``max_gen_toks``, ``m_max``, ``trace_seed``, …).
    ``model_args``: extra model arguments (``dtype``, ``gpu_memory_utilization``, …).
    ``python``: the interpreter to run (e.g. ``.venv-vllm/bin/python`` for vLLM; default this
    one). Per-sample logs are written too (``--log_samples``). Raises CalledProcessError if
    lm-eval fails, FileNotFoundError if it wrote no results file.
    """
    if not TASKS_DIR.is_dir():
        raise FileNotFoundError(f"task folder {TASKS_DIR} not found (install abscot editable: pip install -e .)")
    if backend not in ("hf", "vllm"):
        raise ValueError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    out = Path(out_dir)
    cmd = [
        str(python or sys.executable), "-m", "abscot_plugin.eval_cli",
        "--model", f"abscot-{backend}",
        "--model_args", _kv({"pretrained": str(model_dir), **(model_args or {})}),
        "--tasks", ",".join(tasks),
        "--include_path", str(TASKS_DIR),
        "--batch_size", str(batch_size),
        "--output_path", str(out),
        "--log_samples",
    ]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if data_overrides:
        cmd += ["--metadata", json.dumps({k: str(v) for k, v in data_overrides.items()})]
    if gen_kwargs:
        cmd += ["--gen_kwargs", _kv(gen_kwargs)]
    started = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})
    written = [p for p in out.rglob("results_*.json") if p.stat().st_mtime >= started - 1]
    if not written:
        raise FileNotFoundError(f"lm-eval wrote no results_*.json under {out}")
    return max(written, key=lambda p: p.stat().st_mtime)


if __name__ == "__main__":
    main()
