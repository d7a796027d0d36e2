"""The stage graph of a T-round warm-up (docs/method.md, "Rounds"), with each stage's fingerprint.

Round 1: train A1 on random traces -> merge -> Phase B traces from A1 (prompt only) -> train
B1 -> merge. Round t >= 2: Phase A traces from B(t-1) with the CoT in context -> train A_t from
B(t-1) -> merge -> Phase B traces from A_t -> train B_t -> merge. B_T is the warm-up model. Optional
evaluation stages: ``eval_base`` (the base model, first: it checks the evaluation settings before
any training) and ``eval`` (B_T). With an ``rl`` section, the RL stage follows (:func:`add_rl_stages`):
``rl_train`` (GRPO from B_T) -> ``rl_merge`` (LoRA) -> ``rl_eval`` (the RL model).

Each stage is one subprocess command (:mod:`.commands`) with its own log. Its fingerprint hashes
everything it depends on: its command line, its generated axolotl YAML (:mod:`.training`), the
data slice it reads, the base model (round 1) and the fingerprints of the stages whose outputs it
reads, so a change anywhere upstream changes every fingerprint downstream. Each training stage
carries its :class:`~.schedule.Schedule` (shown by ``--dry-run``, checked after training).

Run folder layout::

    OUT/manifest.json  SUMMARY.md  run_config.yml  data/<slice>.jsonl  logs/<stage>.log
    OUT/plots/<stage>_{loss,lr}.png  OUT/prepared/<round>_<phase>/
    OUT/eval/{base,final,rl}/ (lm-eval results and samples)  OUT/eval/report.{md,png}
    OUT/round<t>/phase_<a|b>/{axolotl.yml, traces.jsonl, train/, model/}
    OUT/rl/{axolotl.yml, train/, model/}  OUT/data/rl.jsonl  OUT/prepared/rl/
    OUT/superseded/<stage>-<time>/   (outputs of stale stages, moved aside by --redo-stale)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..core.choices import Phase
from ..core.fileio import file_digest
from ..core.traces import meta_path
from .commands import eval_command, generation_layout_args, merge_command, traces_command, train_command
from .manifest import Manifest, fingerprint
from .rl import judge_env_and_inputs, rl_schedule, rl_slice, rl_yaml
from .run_config import RunConfig
from .schedule import Schedule
from .slices import DataSlice, data_slices
from .trace_settings import check_trace_settings
from .training import cpu_multiprocess_fix, phase_yaml, short_context_note, training_schedule

Kind = Literal["traces", "train", "merge", "eval"]
SMALL_FILE = 10 * 1024 * 1024  # files below this are hashed whole in model fingerprints
# evaluation stage -> its results folder under OUT/eval
EVAL_FOLDERS = {"eval_base": "base", "eval": "final", "rl_eval": "rl"}
RL_STAGES = ("rl_train", "rl_merge", "rl_eval")  # the names add_rl_stages gives its stages


@dataclass
class Stage:
    """One subprocess of the pipeline. ``inputs``: what its fingerprint hashes besides its command
    and YAML; ``upstream``: the stages whose outputs it reads; ``resumable``: its command resumes
    from its own partial outputs, which a rerun keeps; ``schedule``: training stages only."""

    name: str
    kind: Kind
    command: list[str]
    outputs: list[Path]
    log: Path
    inputs: dict[str, Any]
    upstream: list[str]
    env: dict[str, str] = field(default_factory=dict)
    yaml_path: Path | None = None
    yaml: dict[str, Any] | None = None
    fingerprint: str = ""
    schedule: Schedule | None = None  # a GRPOSchedule for the RL stage
    resumable: bool = False

    def shell(self) -> str:
        """The command as one shell line."""
        return shlex.join(self.command)


@dataclass
class Plan:
    """Every stage of a run in order, the data slices they read, the final (warm-up) model, plan
    notes, and the RL model (None without an ``rl`` section)."""

    cfg: RunConfig
    stages: list[Stage]
    slices: dict[Path, DataSlice]  # data slice file -> where its rows are
    final_model: Path
    notes: list[str]
    rl_model: Path | None = None

    @property
    def run_dir(self) -> Path:
        """The run folder (``output_dir``)."""
        return self.cfg.output_dir

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)


def statuses(plan: Plan, manifest: Manifest) -> dict[str, str]:
    """done (recorded with the fingerprint planned now) / stale (another) / todo, per stage."""
    out = {}
    for stage in plan.stages:
        record = manifest.get(stage.name)
        if record is None:
            out[stage.name] = "todo"
        else:
            out[stage.name] = "done" if record["fingerprint"] == stage.fingerprint else "stale"
    return out


def model_fingerprint(model: str) -> dict[str, Any]:
    """Identity of an external model: a hub id as is; a folder by its small files' contents and
    its large files' names and sizes (hashing many GB of weights per run would be slow)."""
    path = Path(model)
    if not path.is_dir():
        return {"hub_id": model}
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        files[str(f.relative_to(path))] = file_digest(f) if size < SMALL_FILE else f"size:{size}"
    return {"path": model, "files": files}


def deepspeed_input(yaml_cfg: dict[str, Any]) -> dict[str, str]:
    """A training stage's DeepSpeed config file, by digest (``{}`` without one)."""
    path = Path(str(yaml_cfg.get("deepspeed") or ""))
    return {"deepspeed": file_digest(path)} if yaml_cfg.get("deepspeed") and path.is_file() else {}


class _Graph:
    """The stages planned so far; each added stage gets its fingerprint from its inputs and its
    upstream stages' fingerprints."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self.fingerprints: dict[str, str] = {}

    def add(self, stage: Stage, hash_command: bool = True) -> Stage:
        stage.inputs = {**stage.inputs, "upstream": {name: self.fingerprints[name] for name in stage.upstream}}
        if hash_command:
            stage.inputs["command"] = stage.command
        if stage.yaml is not None:
            stage.inputs["yaml"] = stage.yaml
        stage.fingerprint = fingerprint(stage.inputs)
        self.fingerprints[stage.name] = stage.fingerprint
        self.stages.append(stage)
        return stage


def evaluation_stage(
    cfg: RunConfig, name: str, model: str, tasks: list[str], upstream: list[str], env: dict[str, str]
) -> Stage | None:
    """One lm-eval run of ``tasks`` on ``model``, writing results under ``OUT/eval/<folder>``
    (:data:`EVAL_FOLDERS`); None without tasks."""
    if not tasks:
        return None
    out = cfg.output_dir / "eval" / EVAL_FOLDERS[name]
    inputs: dict[str, Any] = {
        "data_files": {key: file_digest(path) for key, path in cfg.evaluation.data_files.items()},
    }
    if not upstream:
        inputs["base_model"] = model_fingerprint(model)
    stage_env = {**env, **cfg.generation.env} if cfg.eval_backend == "vllm" else env
    return Stage(
        name,
        "eval",
        eval_command(cfg, model, tasks, out),
        [out],
        cfg.output_dir / "logs" / f"{name}.log",
        inputs,
        upstream,
        stage_env,
    )


def build_plan(cfg: RunConfig, machine_rank: int | None = None) -> Plan:
    """All stages of the run, in order, with their fingerprints (``machine_rank``: this machine's,
    in a multi-node run; it changes the launch line, not the fingerprints)."""
    run = cfg.output_dir
    check_trace_settings(cfg)  # generation vs training vs evaluation, before anything is planned
    notes: list[str] = []
    slices = data_slices(cfg)
    extra_yaml = cpu_multiprocess_fix(cfg, notes)
    graph = _Graph()
    env = {"AXOLOTL_DO_NOT_TRACK": "1", **cfg.env}
    lc = cfg.training.launcher
    # what of the launch changes training results (not the machine rank or addresses)
    launcher_identity = {
        "num_processes": lc.num_processes,
        "num_machines": lc.num_machines,
        "extra_args": lc.extra_args,
        "config_file": file_digest(lc.config_file) if lc.config_file else None,
    }
    # the baseline first: it checks the evaluation settings before hours of training
    base_eval = evaluation_stage(cfg, "eval_base", cfg.base_model, cfg.evaluation.baseline_tasks, [], env)
    if base_eval:
        graph.add(base_eval)
    model: str = cfg.base_model
    model_stage: str | None = None  # the stage that produced `model` (None: the external base)
    for t in range(1, cfg.rounds + 1):
        for phase in Phase:
            folder = run / f"round{t}" / phase.value
            data = slices[(t, phase)].path
            data_inputs = {"data": {"file": str(data), "sha256": slices[(t, phase)].sha256}}
            if model_stage is None:
                data_inputs["base_model"] = model_fingerprint(model)
            prefix = f"r{t}_{phase.letter}"
            upstream = [model_stage] if model_stage else []
            # round 1 Phase A trains on random traces; every other phase on generated ones
            traces = folder / "traces.jsonl" if (t > 1 or not phase.has_cot) else None
            train_dir = folder / "train"
            yaml_cfg = phase_yaml(cfg, phase, model, data, traces, train_dir, run / "prepared" / prefix)
            yaml_cfg.update(extra_yaml)
            if traces is not None:
                note = short_context_note(cfg, yaml_cfg) if phase.has_cot else None
                if note and note not in notes:
                    notes.append(note)
                command = traces_command(cfg, yaml_cfg, Path(model), data, phase, traces)
                graph.add(
                    Stage(
                        f"{prefix}_traces",
                        "traces",
                        command + generation_layout_args(cfg, machine_rank),
                        [traces, meta_path(traces)],
                        run / "logs" / f"{prefix}_traces.log",
                        {**data_inputs, "command": command},
                        list(upstream),
                        {**env, **cfg.generation.env},
                        resumable=True,
                    ),
                    hash_command=False,
                )  # the layout changes where traces are made, not what they are
                upstream = [*upstream, f"{prefix}_traces"]
            yaml_path = folder / "axolotl.yml"
            inputs = {**data_inputs, "launcher": launcher_identity, **deepspeed_input(yaml_cfg)}
            train = graph.add(
                Stage(
                    f"{prefix}_train",
                    "train",
                    train_command(cfg, yaml_path, machine_rank),
                    [train_dir],
                    run / "logs" / f"{prefix}_train.log",
                    inputs,
                    upstream,
                    env,
                    yaml_path,
                    yaml_cfg,
                    schedule=training_schedule(yaml_cfg, cfg.data.num_rows, lc.num_processes, cfg.phase(phase).config),
                ),
                hash_command=False,
            )  # the launch line differs per machine; inputs keep what matters
            if yaml_cfg.get("adapter") == "lora":
                merged = folder / "model"
                graph.add(
                    Stage(
                        f"{prefix}_merge",
                        "merge",
                        merge_command(cfg, yaml_cfg, train_dir, merged, model),
                        [merged],
                        run / "logs" / f"{prefix}_merge.log",
                        {},
                        [train.name],
                        env,
                    )
                )
                model, model_stage = str(merged), f"{prefix}_merge"
            else:
                model, model_stage = str(train_dir), train.name
    final_eval = evaluation_stage(cfg, "eval", model, cfg.evaluation.tasks, [model_stage], env)
    if final_eval:
        graph.add(final_eval)
    rl_model = add_rl_stages(cfg, graph, model, model_stage, env, launcher_identity, machine_rank, extra_yaml)
    pieces = [*slices.values(), *([rl_model[1]] if rl_model else [])]
    return Plan(
        cfg,
        graph.stages,
        {piece.path: piece for piece in pieces},
        Path(model),
        notes,
        rl_model[0] if rl_model else None,
    )


def add_rl_stages(
    cfg: RunConfig,
    graph: _Graph,
    warmup: str,
    model_stage: str,
    env: dict[str, str],
    launcher_identity: dict[str, Any],
    machine_rank: int | None,
    extra_yaml: dict[str, Any],
) -> tuple[Path, DataSlice] | None:
    """Add the RL stages after the warm-up model ``warmup`` (made by stage ``model_stage``), when
    the run config has an ``rl`` section: ``rl_train`` (GRPO, :mod:`.rl`), ``rl_merge`` for a LoRA
    adapter, and ``rl_eval`` when there are RL tasks. Returns the RL model's folder and the prompt
    slice (None without ``rl``)."""
    if cfg.rl is None:
        return None
    run, (train_name, merge_name, eval_name) = cfg.output_dir, RL_STAGES
    piece = rl_slice(cfg)
    folder = run / "rl"
    yaml_cfg = {**rl_yaml(cfg, warmup, piece.path, folder / "train", run / "prepared" / "rl"), **extra_yaml}
    judge_env, judge_inputs = judge_env_and_inputs(cfg)
    inputs = {
        "data": {"file": str(piece.path), "sha256": piece.sha256},
        "launcher": launcher_identity,
        **deepspeed_input(yaml_cfg),
        **judge_inputs,
    }
    lc = cfg.training.launcher
    train = graph.add(
        Stage(
            train_name,
            "train",
            train_command(cfg, folder / "axolotl.yml", machine_rank),
            [folder / "train"],
            run / "logs" / f"{train_name}.log",
            inputs,
            [model_stage],
            {**env, **judge_env},
            folder / "axolotl.yml",
            yaml_cfg,
            schedule=rl_schedule(yaml_cfg, piece.rows, lc.num_processes, cfg.rl.config),
        ),
        hash_command=False,
    )  # as the warm-up's training stages
    model, model_stage = folder / "train", train.name
    if yaml_cfg.get("adapter") == "lora":
        model = folder / "model"
        graph.add(
            Stage(
                merge_name,
                "merge",
                merge_command(cfg, yaml_cfg, folder / "train", model, warmup),
                [model],
                run / "logs" / f"{merge_name}.log",
                {},
                [train.name],
                env,
            )
        )
        model_stage = merge_name
    rl_eval = evaluation_stage(cfg, eval_name, str(model), cfg.rl_tasks, [model_stage], env)
    if rl_eval:
        graph.add(rl_eval)
    return model, piece
