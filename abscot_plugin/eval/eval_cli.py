"""lm-eval's command line with the abscot model classes registered first.

    python -m abscot_plugin.eval.eval_cli --model abscot-hf --model_args pretrained=DIR \\
        --tasks math500_abscot --include_path eval_tasks [any other lm_eval flag]

Every argument goes to lm-eval's CLI unchanged. Stock ``lm_eval`` registers our models only when
a task is given as a YAML path (it imports ``eval_tasks/utils.py`` before building the model);
by task name, or for the groups, this entry point is needed.

:func:`task_generation_kwargs` reads a task's generation settings from its YAML (the orchestrator
checks vLLM's context length against them); :data:`TRACE_GEN_KWARGS` names the abstract tasks'
trace settings (the orchestrator fills them from the run's ``generation`` section).
:func:`lm_eval_command` builds this entry point's command line (the orchestrator's evaluation
stages run it as a subprocess, so that a GPU is released after evaluation and vLLM can run from
its own environment); :func:`evaluate` runs it and returns the results file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

import yaml

from ..core.choices import DEFAULT_BACKEND, Backend

TASKS_DIR = Path(__file__).resolve().parents[2] / "eval_tasks"
DEFAULT_EVAL_BATCH_SIZE = 16  # lm-eval's --batch_size: requests per model call
# the abstract tasks' generation_kwargs that set the trace's sampling -> the TraceSettings field
# each sets (eval_tasks/_abscot_template_yaml states them; lm_eval_models.DecodeSpec reads them)
TRACE_GEN_KWARGS = {
    "m_min": "m_min",
    "m_max": "m_max",
    "trace_temperature": "temperature",
    "trace_top_p": "top_p",
    "trace_seed": "seed",
}


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs: a ``!function`` tag stays a plain string."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _task_yaml(path: Path) -> dict[str, Any]:
    """A task YAML with its ``include:`` chain merged in (the file's own keys win, as in lm-eval)."""
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader) or {}
    include = raw.pop("include", None)
    return {**_task_yaml(path.parent / include), **raw} if include else raw


def task_generation_kwargs(names: list[str]) -> dict[str, dict[str, Any]]:
    """The ``generation_kwargs`` each task of ``names`` (groups expanded) sets in its YAML in
    eval_tasks/, e.g. ``{"math500_verbal": {"abscot_mode": "verbal", "max_gen_toks": …, …}}``;
    raises ValueError naming a task or group that eval_tasks/ does not define."""
    configs = [_task_yaml(path) for path in sorted(TASKS_DIR.glob("*.yaml"))]
    tasks = {c["task"]: c for c in configs if isinstance(c.get("task"), str)}
    groups = {c["group"]: c["task"] for c in configs if "group" in c}
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        for task in groups.get(name, [name]):
            if task not in tasks:
                raise ValueError(
                    f"unknown task {task!r}: eval_tasks/ defines {sorted(tasks)} and groups {sorted(groups)}"
                )
            found[task] = dict(tasks[task].get("generation_kwargs") or {})
    return found


def is_abstract(generation_kwargs: dict[str, Any]) -> bool:
    """Whether a task with these ``generation_kwargs`` decodes an abstract trace (its
    ``abscot_mode``; verbal tasks decode the answer only)."""
    return generation_kwargs.get("abscot_mode") == "abstract"


def main(argv: list[str] | None = None) -> None:
    """Register ``abscot-hf``/``abscot-vllm``, then run ``lm_eval`` with ``argv`` (default: sys.argv)."""
    from lm_eval.__main__ import cli_evaluate

    import abscot_plugin.eval.lm_eval_models  # noqa: F401  (registers the model classes)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


def _kv(values: dict[str, Any]) -> str:
    """lm-eval's ``key=value,key=value`` form."""
    for key, value in values.items():
        if "," in str(value) or "=" in str(value):
            raise ValueError(f"value of {key!r} contains ',' or '=', which lm-eval cannot parse: {value!r}")
    return ",".join(f"{key}={value}" for key, value in values.items())


def lm_eval_command(
    model_dir: str | Path,
    tasks: list[str],
    out_dir: str | Path,
    backend: Backend = DEFAULT_BACKEND,
    limit: int | None = None,
    data_overrides: dict[str, str] | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    model_args: dict[str, Any] | None = None,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    python: str | Path | None = None,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The command line of this entry point that evaluates ``model_dir`` on ``tasks`` (names from
    eval_tasks/, e.g. ``["math500_abscot"]``) into ``out_dir``, with per-sample logs.

    ``data_overrides``: local files instead of the hub datasets, e.g. ``{"math500_file":
    "math500.jsonl", "gsm8k_file": "gsm8k.jsonl"}`` (passed as ``--metadata``). ``gen_kwargs``:
    overrides of the tasks' generation settings (``max_gen_toks``, ``m_max``, ``trace_seed``, …).
    ``model_args``: extra model arguments (``dtype``, ``tensor_parallel_size``, …).
    ``python``: the interpreter (e.g. ``.venv-vllm/bin/python`` for vLLM; default this one).
    ``extra_args``: further lm-eval flags, appended unchanged.
    """
    if backend not in get_args(Backend):
        raise ValueError(f"backend must be one of {get_args(Backend)}, got {backend!r}")
    if not tasks:
        raise ValueError("no tasks to evaluate")
    cmd = [
        str(python or sys.executable),
        "-m",
        "abscot_plugin.eval.eval_cli",
        "--model",
        f"abscot-{backend}",
        "--model_args",
        _kv({"pretrained": str(model_dir), **(model_args or {})}),
        "--tasks",
        ",".join(tasks),
        "--include_path",
        str(TASKS_DIR),
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(out_dir),
        "--log_samples",
    ]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if data_overrides:
        cmd += ["--metadata", json.dumps({k: str(v) for k, v in data_overrides.items()}, sort_keys=True)]
    if gen_kwargs:
        cmd += ["--gen_kwargs", _kv(gen_kwargs)]
    return cmd + list(extra_args or [])


def evaluate(
    model_dir: str | Path,
    tasks: list[str],
    out_dir: str | Path,
    *,
    env: dict[str, str] | None = None,
    **options: Any,
) -> Path:
    """Run :func:`lm_eval_command` (same arguments) in a subprocess with ``env`` added to the
    environment, and return the path of the lm-eval results JSON it wrote under ``out_dir``.
    Raises CalledProcessError if lm-eval fails, FileNotFoundError if it wrote no results file."""
    if not TASKS_DIR.is_dir():
        raise FileNotFoundError(f"task folder {TASKS_DIR} not found (install abscot editable: pip install -e .)")
    cmd = lm_eval_command(model_dir, tasks, out_dir, **options)
    started = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})
    return latest_results(out_dir, since=started - 1)


def latest_results(out_dir: str | Path, since: float = 0.0) -> Path:
    """The newest ``results_*.json`` lm-eval wrote under ``out_dir`` (modified after ``since``)."""
    written = [p for p in Path(out_dir).rglob("results_*.json") if p.stat().st_mtime >= since]
    if not written:
        raise FileNotFoundError(f"lm-eval wrote no results_*.json under {out_dir}")
    return max(written, key=lambda p: p.stat().st_mtime)


if __name__ == "__main__":
    main()
