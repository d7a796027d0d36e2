"""The command line of each stage kind, and the interpreter each runs under.

* ``train``: ``accelerate launch -m axolotl.cli.train OUT/round<t>/phase_<x>/axolotl.yml``, what
  ``axolotl train`` runs (:func:`train_command`; the YAML: :mod:`.training`);
* ``merge``: ``python -m abscot_plugin.checkpoints.merge TRAIN_DIR MODEL_DIR …`` (:func:`merge_command`);
* ``traces``: ``python -m abscot_plugin.generation.generate --mode phase_<x> …`` under the generation
  backend's interpreter (:func:`traces_command`);
* ``eval``: ``python -m abscot_plugin.eval.eval_cli …`` (lm-eval) under the evaluation backend's
  interpreter (:func:`eval_command`).

Every stage runs as its own process (a GPU is free again when it exits, and vLLM runs from its own
environment), so nothing here imports torch.

Adding a stage kind (an RL stage after the warm-up, data-parallel trace generation, …):

1. here, a function that returns its command line from the run config and what the stage reads
   (:func:`backend_python` picks the interpreter of a stage that runs in the vLLM environment);
   its settings get a section (or keys) in :mod:`.run_config`;
2. in :mod:`.checks`, a function ``(plan, stage) -> metrics`` that checks what the finished stage
   wrote, registered in ``checks.CHECKS`` under the kind's name (and the name added to
   ``plan.Kind``);
3. in :func:`.plan.build_plan`, the :class:`~.plan.Stage` at its place in the graph: outputs, log,
   the inputs its command line does not show (digests of files it reads), the upstream stages
   whose outputs it reads, its environment, and ``resumable=True`` if the command resumes from
   its own partial outputs.

The runner, the manifest, ``--dry-run`` and SUMMARY.md then handle it without change.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..args import AbsCoTArgs
from ..core.choices import Backend, Phase
from ..eval.eval_cli import is_abstract, lm_eval_command, task_generation_kwargs
from .run_config import PlanError, RunConfig
from .trace_settings import eval_gen_kwargs

REPO_ROOT = Path(__file__).resolve().parents[2]
# Context tokens an evaluation needs besides the trace and the answer budget: the chat template,
# the system prompt and the problem (MATH-500's longest problems, with Asymptote figures, are a few
# hundred tokens; GSM8K's under 300), and the trace delimiters.
PROMPT_MARGIN = 1024


def backend_python(cfg: RunConfig, backend: Backend) -> str:
    """The interpreter of the generation and evaluation stages of ``backend`` (vLLM lives in its
    own environment): ``generation.python`` where it serves that backend, else this interpreter
    for hf and ``.venv-vllm/bin/python`` for vllm."""
    if cfg.generation.python and cfg.generation.backend == backend:
        return str(cfg.generation.python)
    if backend == "hf":
        return sys.executable
    default = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if not default.exists():
        raise PlanError(
            f"the vllm backend needs generation.python or {default} (make venv-vllm, or bash scripts/setup_vllm.sh)"
        )
    return str(default)


def launcher_args(cfg: RunConfig, machine_rank: int | None = None) -> list[str]:
    """``accelerate launch`` arguments from ``training.launcher``."""
    lc = cfg.training.launcher
    rank = lc.machine_rank if machine_rank is None else machine_rank
    args = [
        "--num_processes",
        str(lc.num_processes),
        "--num_machines",
        str(lc.num_machines),
        "--machine_rank",
        str(rank),
    ]
    if lc.main_process_ip:
        args += ["--main_process_ip", lc.main_process_ip]
    if lc.main_process_port:
        args += ["--main_process_port", str(lc.main_process_port)]
    if lc.config_file:
        args += ["--config_file", str(lc.config_file)]
    elif lc.num_processes > 1:
        args += ["--multi_gpu"]
    return args + list(lc.extra_args)


def train_command(cfg: RunConfig, yaml_path: Path, machine_rank: int | None = None) -> list[str]:
    """``accelerate launch`` of axolotl's trainer on a generated training YAML (what ``axolotl
    train`` runs); ``machine_rank``: this machine's, in a multi-node run."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher_args(cfg, machine_rank),
        "-m",
        "axolotl.cli.train",
        str(yaml_path),
    ]


def merge_command(cfg: RunConfig, yaml_cfg: dict[str, Any], train_dir: Path, merged: Path, base: str) -> list[str]:
    """The LoRA merge of a training stage's adapter into ``merged``, its new vocabulary rows
    rebuilt as that training's YAML initialised them."""
    args = AbsCoTArgs.from_cfg(yaml_cfg)
    return [
        sys.executable,
        "-m",
        "abscot_plugin.checkpoints.merge",
        str(train_dir),
        str(merged),
        "--base",
        base,
        "--num-symbols",
        str(args.abscot_num_symbols),
        "--init",
        args.abscot_init,
        "--init-seed",
        str(args.abscot_init_seed),
        "--dtype",
        cfg.merge.dtype,
    ]


def traces_command(
    cfg: RunConfig, yaml_cfg: dict[str, Any], model: Path, data: Path, phase: Phase, out: Path
) -> list[str]:
    """The ``abscot_plugin.generation.generate`` command of a trace stage: the run's trace settings
    (``generation``, :mod:`.trace_settings`); M, row names and bad-row handling follow the training
    YAML that will read the traces (``yaml_cfg``), and so does a Phase A prefix: that YAML's
    ``sequence_len`` and ``abscot_cot_keep``, and ``--m-max``, which is its ``abscot_m_max`` too
    (the prefix is its rows' prefix)."""
    g = cfg.generation
    args = AbsCoTArgs.from_cfg(yaml_cfg)
    cmd = [
        backend_python(cfg, g.backend),
        "-m",
        "abscot_plugin.generation.generate",
        "--model",
        str(model),
        "--data",
        str(data),
        "--mode",
        phase.value,
        "--out",
        str(out),
        "--backend",
        g.backend,
        "--m-min",
        str(g.m_min),
        "--m-max",
        str(g.m_max),
        "--temperature",
        str(g.temperature),
        "--top-p",
        str(g.top_p),
        "--seed",
        str(g.seed),
        "--num-symbols",
        str(args.abscot_num_symbols),
        "--id-field",
        args.abscot_id_field,
        "--dtype",
        g.dtype,
    ]
    if g.max_model_len:
        cmd += ["--max-model-len", str(g.max_model_len)]
    if phase.has_cot:
        cmd += [
            "--sequence-len",
            str(yaml_cfg["sequence_len"]),
            "--cot-keep",
            args.abscot_cot_keep,
        ]
    if g.backend == "hf":
        cmd += ["--batch-size", str(g.batch_size)]
    else:
        cmd += ["--tensor-parallel-size", str(g.tensor_parallel_size)]
    if args.abscot_skip_bad_rows:
        cmd += ["--skip-bad-rows"]
    return cmd + list(g.extra_args)


def generation_layout_args(cfg: RunConfig, machine_rank: int | None = None) -> list[str]:
    """The data-parallel layout of a trace stage's command (``generation.data_parallel_size``
    workers per node on ``num_nodes`` machines; ``machine_rank``: this machine's). It changes
    where traces are made, not what they are (:func:`abscot_plugin.generation.runner.owned_chunks`),
    so the stage's fingerprint leaves it out."""
    g = cfg.generation
    args = ["--data-parallel-size", str(g.data_parallel_size)] if g.data_parallel_size > 1 else []
    if g.num_nodes > 1:
        rank = cfg.training.launcher.machine_rank if machine_rank is None else machine_rank
        args += ["--num-nodes", str(g.num_nodes), "--node-rank", str(rank)]
    return args


def gpu_layout(cfg: RunConfig) -> str:
    """The dry run's line on GPUs: trace generation's engines and training's processes."""
    g, lc = cfg.generation, cfg.training.launcher
    engines = g.num_nodes * g.data_parallel_size
    gpus = f"{g.tensor_parallel_size} GPU(s) each" if g.backend == "vllm" else "1 device each"
    return (
        f"GPU layout: trace generation {g.num_nodes} node(s) × {g.data_parallel_size} data-parallel engine(s) "
        f"= {engines} {g.backend} engine(s), {gpus}; training {lc.num_machines} machine(s) × "
        f"{lc.num_processes // lc.num_machines} process(es) = {lc.num_processes} process(es)"
    )


def eval_command(cfg: RunConfig, model: str, tasks: list[str], out: Path) -> list[str]:
    """The ``abscot_plugin.eval.eval_cli`` (lm-eval) run of ``tasks`` on ``model`` into ``out``, with the
    run's ``evaluation`` settings and, for abstract tasks, its trace settings
    (:func:`.trace_settings.eval_gen_kwargs`). With the vLLM backend, ``max_model_len`` must hold
    every task's prompt, trace and answer budget (:func:`check_eval_context`)."""
    ev, backend = cfg.evaluation, cfg.eval_backend
    gen_kwargs = eval_gen_kwargs(cfg, tasks)
    if backend == "vllm" and ev.model_args.get("max_model_len"):
        check_eval_context(int(ev.model_args["max_model_len"]), tasks, gen_kwargs)
    return lm_eval_command(
        model,
        tasks,
        out,
        backend,
        ev.limit,
        {k: str(v) for k, v in ev.data_files.items()},
        gen_kwargs,
        ev.model_args,
        ev.batch_size,
        backend_python(cfg, backend),
        ev.extra_args,
    )


def _context_parts(settings: dict[str, Any]) -> list[tuple[int, str]]:
    """The context an evaluation request fills, from its task's generation settings."""
    parts = [(PROMPT_MARGIN, "prompt tokens")]
    if is_abstract(settings):
        parts.append((int(settings["m_max"]), "trace tokens (m_max)"))
    return parts + [(int(settings["max_gen_toks"]), "answer tokens (max_gen_toks)")]


def _eval_contexts(tasks: list[str], gen_kwargs: dict[str, Any]) -> dict[str, list[tuple[int, str]]]:
    tasks_settings = task_generation_kwargs(tasks)
    return {task: _context_parts({**settings, **gen_kwargs}) for task, settings in tasks_settings.items()}


def eval_context_needed(tasks: list[str], gen_kwargs: dict[str, Any]) -> dict[str, int]:
    """Context tokens each task of ``tasks`` (groups expanded) needs: :data:`PROMPT_MARGIN`, the
    trace (``m_max``, abstract tasks) and the answer budget (``max_gen_toks``), read from the task's
    YAML with ``gen_kwargs`` (the run's overrides) on top."""
    return {task: sum(n for n, _ in parts) for task, parts in _eval_contexts(tasks, gen_kwargs).items()}


def check_eval_context(max_model_len: int, tasks: list[str], gen_kwargs: dict[str, Any]) -> None:
    """vLLM ends an answer at the end of its context without counting it as truncated: refuse a
    ``max_model_len`` that cannot hold a task's prompt, trace and answer budget (PlanError)."""
    try:
        contexts = _eval_contexts(tasks, gen_kwargs)
    except ValueError as exc:
        raise PlanError(f"evaluation: {exc}") from None
    for task, parts in contexts.items():
        need = sum(n for n, _ in parts)
        if max_model_len < need:
            raise PlanError(
                f"evaluation.model_args.max_model_len {max_model_len} is too short for task {task}: "
                + " + ".join(f"{n} {what}" for n, what in parts)
                + f" = {need}; raise max_model_len "
                "(vLLM would stop answers at the end of the context, uncounted as truncated) or lower "
                "max_gen_toks in evaluation.gen_kwargs"
            )
