"""The stage plan of a T-round warm-up (METHOD.md, policy iteration).

Round 1: train A1 on random traces -> merge -> Phase B traces from A1 (prompt only) -> train
B1 -> merge. Round t >= 2: Phase A traces from B(t-1) with the CoT in context -> train A_t from
B(t-1) -> merge -> Phase B traces from A_t -> train B_t -> merge. B_T is the warm-up model. Optional
evaluation stages: ``eval_base`` (the base model, first: it checks the evaluation settings before
any training) and ``eval`` (B_T, last).

Each stage is one subprocess command with its own log. Its fingerprint hashes everything it
depends on: its command line, its generated axolotl YAML, the data slice it reads, the base model
(round 1) and the fingerprints of the stages whose outputs it reads, so a change anywhere
upstream changes every fingerprint downstream.

Each training stage carries its :class:`Schedule`, the optimizer steps and warm-up axolotl will
plan from the YAML, the N rows and the processes (shown by ``--dry-run``, checked after training).
The batch must be a number of examples, so ``sample_packing`` is refused. With the vLLM backend,
an evaluation ``max_model_len`` must hold every task's prompt, trace and answer budget.

Run folder layout::

    OUT/manifest.json  SUMMARY.md  run_config.yml  data/<slice>.jsonl  logs/<stage>.log
    OUT/plots/<stage>_{loss,lr}.png  OUT/prepared/<round>_<phase>/
    OUT/eval/{base,final}/ (lm-eval results and samples)  OUT/eval/report.{md,png}
    OUT/round<t>/phase_<a|b>/{axolotl.yml, traces.jsonl, train/, model/}
    OUT/superseded/<stage>-<time>/   (outputs of stale stages, moved aside by --redo-stale)
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from ..args import AbsCoTArgs
from ..choices import Phase
from ..eval_cli import lm_eval_command, task_generation_kwargs
from ..fileio import file_digest
from ..rows import row_id_of
from ..traces import meta_path
from .manifest import fingerprint
from .run_config import MANAGED_KEYS, RunConfig, one_line
from .schedule import Schedule

Kind = Literal["traces", "train", "merge", "eval"]
REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_FILE = 10 * 1024 * 1024  # files below this are hashed whole in model fingerprints
# Context tokens an evaluation needs besides the trace and the answer budget: the chat template,
# the system prompt and the problem (MATH-500's longest problems, with Asymptote figures, are a few
# hundred tokens; GSM8K's under 300), and the trace delimiters.
PROMPT_MARGIN = 1024


class PlanError(ValueError):
    """A run config that validates but cannot be planned (one-line message)."""


@dataclass
class Stage:
    """One subprocess of the pipeline (``schedule``: training stages only)."""

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
    schedule: Schedule | None = None

    def shell(self) -> str:
        """The command as one shell line."""
        return shlex.join(self.command)


@dataclass
class Plan:
    cfg: RunConfig
    stages: list[Stage]
    slices: dict[Path, str]  # data slice file -> content
    final_model: Path
    notes: list[str]

    @property
    def run_dir(self) -> Path:
        """The run folder (``output_dir``)."""
        return self.cfg.output_dir

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)


def _digest_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


def data_slices(cfg: RunConfig) -> dict[tuple[int, Phase], tuple[Path, str]]:
    """(round, phase) -> (slice file, content) following ``data.schedule``."""
    lines = [ln for ln in cfg.data.path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    n, rounds, schedule = cfg.data.num_rows, cfg.rounds, cfg.data.schedule
    names = {
        (t, p): {"same": "all", "per_round": f"round{t}", "per_phase": f"round{t}_{p}"}[schedule]
        for t in range(1, rounds + 1) for p in Phase
    }
    order = list(dict.fromkeys(names.values()))
    if len(order) * n > len(lines):
        raise PlanError(
            f"data.path {cfg.data.path} has {len(lines)} rows; schedule {schedule} with T={rounds} "
            f"and N={n} needs {len(order) * n}"
        )
    _check_ids(cfg, lines[: len(order) * n])
    content = {name: "\n".join(lines[k * n : (k + 1) * n]) + "\n" for k, name in enumerate(order)}
    folder = cfg.output_dir / "data"
    return {key: (folder / f"{name}.jsonl", content[name]) for key, name in names.items()}


def _check_ids(cfg: RunConfig, lines: list[str]) -> None:
    """Every row the run uses needs a unique name, which trace files are matched to rows by: its
    ``data.id_field``, else a hash of its messages (:func:`~abscot_plugin.rows.row_id_of`, the rule
    training and trace generation name rows by)."""
    seen: set[str] = set()
    for lineno, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise PlanError(f"data.path {cfg.data.path}, row {lineno}: not a JSON object")
        row_id = row_id_of(row, cfg.data.id_field)
        if row_id in seen:
            raise PlanError(f"data.path {cfg.data.path}, row {lineno}: duplicate id {row_id!r}")
        seen.add(row_id)


def phase_yaml(
    cfg: RunConfig, phase: Phase, base_model: str, data: Path, traces: Path | None,
    out_dir: Path, prepared: Path,
) -> dict[str, Any]:
    """The axolotl config of one training stage: the phase YAML, the run's overrides, and the
    keys the orchestrator manages (model, data, traces, folders, TensorBoard logging)."""
    source = cfg.phase(phase)
    raw = yaml.safe_load(source.config.read_text(encoding="utf-8")) or {}
    types = [d.get("type") for d in raw.get("datasets") or [] if isinstance(d, dict)]
    if types != [phase.dataset_type]:
        raise PlanError(
            f"{source.config}: phase {phase.letter.upper()} needs one dataset of type {phase.dataset_type}, got {types}"
        )
    merged = {**raw, **cfg.training.overrides, **source.overrides}
    for key in MANAGED_KEYS:
        merged.pop(key, None)
    merged = {k: v for k, v in merged.items() if v is not None}  # an override of null removes a key
    merged.update(
        base_model=base_model,
        datasets=[{"path": str(data), "ds_type": "json", "type": phase.dataset_type}],
        output_dir=str(out_dir),
        dataset_prepared_path=str(prepared),
        use_tensorboard=True,
    )
    if traces is not None:
        merged["abscot_trace_file"] = str(traces)
    if merged.get("lr_scheduler") != "cosine":
        raise PlanError(
            f"{source.config}: lr_scheduler is {merged.get('lr_scheduler')!r}; the warm-up is "
            "checked as one warm-up + cosine, set lr_scheduler: cosine"
        )
    adapter = merged.get("adapter")
    if adapter not in (None, "lora"):
        raise PlanError(
            f"{source.config}: adapter {adapter!r} is not supported (use lora, or none for full fine-tuning)"
        )
    args = abscot_args(merged, source.config)
    if cfg.generation.m_max > args.abscot_m_max:
        raise PlanError(
            f"generation.m_max {cfg.generation.m_max} exceeds abscot_m_max {args.abscot_m_max} of {source.config}"
        )
    if args.abscot_id_field != cfg.data.id_field:
        raise PlanError(
            f"{source.config}: abscot_id_field {args.abscot_id_field!r} is not data.id_field "
            f"{cfg.data.id_field!r}: training would not find the traces generated for its rows"
        )
    if phase.has_cot and traces is not None and not merged.get("sequence_len"):
        raise PlanError(
            f"{source.config}: set sequence_len (Phase A trace stages cut the CoT to fit it, as training does)"
        )
    return merged


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, asked without torch (the orchestrator never imports
    it): ``nvidia-smi`` is on PATH and lists a device, the test scripts/setup_vllm.sh makes too."""
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def _cpu_multiprocess_fix(cfg: RunConfig, notes: list[str]) -> dict[str, Any]:
    """axolotl 0.19 maps every rank to accelerator LOCAL_RANK; without a GPU (:func:`gpu_present`),
    a ``max_memory`` of the CPU alone gives a CPU device map instead (needed for multi-process CPU
    training)."""
    overrides = {**cfg.training.overrides, **cfg.phase_a.overrides, **cfg.phase_b.overrides}
    if cfg.training.launcher.num_processes == 1 or "max_memory" in overrides or gpu_present():
        return {}
    notes.append("no GPU: training YAMLs get max_memory {cpu: 64GiB} so that axolotl loads on CPU per rank")
    return {"max_memory": {"cpu": "64GiB"}}


def training_schedule(yaml_cfg: dict[str, Any], rows: int, num_processes: int, source: Path) -> Schedule:
    """The :class:`Schedule` of a generated training YAML (``source``: the phase config named in
    errors); a batch that is not a number of examples is a one-line PlanError."""
    try:
        return Schedule.of(yaml_cfg, rows, num_processes)
    except ValueError as exc:
        raise PlanError(f"{source}: {exc}") from None


def launcher_args(cfg: RunConfig, machine_rank: int | None = None) -> list[str]:
    """``accelerate launch`` arguments from ``training.launcher``."""
    lc = cfg.training.launcher
    rank = lc.machine_rank if machine_rank is None else machine_rank
    args = ["--num_processes", str(lc.num_processes), "--num_machines", str(lc.num_machines),
            "--machine_rank", str(rank)]
    if lc.main_process_ip:
        args += ["--main_process_ip", lc.main_process_ip]
    if lc.main_process_port:
        args += ["--main_process_port", str(lc.main_process_port)]
    if lc.config_file:
        args += ["--config_file", str(lc.config_file)]
    elif lc.num_processes > 1:
        args += ["--multi_gpu"]
    return args + list(lc.extra_args)


def backend_python(cfg: RunConfig, backend: str) -> str:
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


def abscot_args(yaml_cfg: dict[str, Any], source: Path) -> AbsCoTArgs:
    """The abscot settings of a generated training YAML, defaults filled in (``source``: the
    phase config named in errors)."""
    try:
        return AbsCoTArgs.from_cfg(yaml_cfg)
    except ValidationError as exc:
        raise PlanError(f"{source}: {one_line(exc)}") from None


def traces_command(cfg: RunConfig, yaml_cfg: dict, model: Path, data: Path, phase: Phase, out: Path) -> list[str]:
    """The ``abscot_plugin.generate`` command of a trace stage. M and bad-row handling follow the
    training YAML that will read the traces, and so does a Phase A prefix: that YAML's
    ``sequence_len``, ``abscot_cot_keep`` and ``abscot_m_max`` (the prefix is its rows' prefix)."""
    g = cfg.generation
    args = AbsCoTArgs.from_cfg(yaml_cfg)  # validated by phase_yaml
    cmd = [
        backend_python(cfg, g.backend), "-m", "abscot_plugin.generate", "--model", str(model), "--data", str(data),
        "--mode", phase.value, "--out", str(out), "--backend", g.backend,
        "--m-min", str(g.m_min), "--m-max", str(g.m_max), "--temperature", str(g.temperature),
        "--top-p", str(g.top_p), "--seed", str(g.seed),
        "--num-symbols", str(args.abscot_num_symbols), "--id-field", args.abscot_id_field,
        "--dtype", g.dtype,
    ]
    if g.max_model_len:
        cmd += ["--max-model-len", str(g.max_model_len)]
    if phase.has_cot:
        cmd += ["--sequence-len", str(yaml_cfg["sequence_len"]),
                "--cot-keep", args.abscot_cot_keep, "--train-m-max", str(args.abscot_m_max)]
    if g.backend == "hf":
        cmd += ["--batch-size", str(g.batch_size)]
    else:
        cmd += ["--tensor-parallel-size", str(g.tensor_parallel_size)]
    if args.abscot_skip_bad_rows:
        cmd += ["--skip-bad-rows"]
    return cmd + list(g.extra_args)


def _short_context_note(cfg: RunConfig, yaml_a: dict) -> str | None:
    """A plan note when the generation engine is shorter than the Phase A training rows."""
    limit, seq = cfg.generation.max_model_len, yaml_a["sequence_len"]
    if limit is None or limit >= seq:
        return None
    return (f"generation.max_model_len {limit} < Phase A sequence_len {seq}: on long rows, Phase A teachers see "
            "less CoT than training (counted in the trace stages' summaries)")


def _context_parts(settings: dict[str, Any]) -> list[tuple[int, str]]:
    """The context an evaluation request fills, from its task's generation settings."""
    parts = [(PROMPT_MARGIN, "prompt tokens")]
    if settings.get("abscot_mode") == "abstract":
        parts.append((int(settings["m_max"]), "trace tokens (m_max)"))
    return parts + [(int(settings["max_gen_toks"]), "answer tokens (max_gen_toks)")]


def _eval_contexts(tasks: list[str], gen_kwargs: dict[str, Any]) -> dict[str, list[tuple[int, str]]]:
    return {task: _context_parts({**settings, **gen_kwargs}) for task, settings in task_generation_kwargs(tasks).items()}


def eval_context_needed(tasks: list[str], gen_kwargs: dict[str, Any]) -> dict[str, int]:
    """Context tokens each task of ``tasks`` (groups expanded) needs: :data:`PROMPT_MARGIN`, the
    trace (``m_max``, abstract tasks) and the answer budget (``max_gen_toks``), read from the task's
    YAML with ``gen_kwargs`` (the run's overrides) on top."""
    return {task: sum(n for n, _ in parts) for task, parts in _eval_contexts(tasks, gen_kwargs).items()}


def _check_eval_context(max_model_len: int, tasks: list[str], gen_kwargs: dict[str, Any]) -> None:
    """vLLM ends an answer at the end of its context without counting it as truncated: refuse a
    ``max_model_len`` that cannot hold a task's prompt, trace and answer budget."""
    try:
        contexts = _eval_contexts(tasks, gen_kwargs)
    except ValueError as exc:
        raise PlanError(f"evaluation: {exc}") from None
    for task, parts in contexts.items():
        need = sum(n for n, _ in parts)
        if max_model_len < need:
            raise PlanError(
                f"evaluation.model_args.max_model_len {max_model_len} is too short for task {task}: "
                + " + ".join(f"{n} {what}" for n, what in parts) + f" = {need}; raise max_model_len "
                "(vLLM would stop answers at the end of the context, uncounted as truncated) or lower "
                "max_gen_toks in evaluation.gen_kwargs"
            )


def evaluation_stage(
    cfg: RunConfig, name: str, model: str, tasks: list[str], upstream: list[str], env: dict[str, str]
) -> Stage | None:
    """One ``abscot_plugin.eval_cli`` run of ``tasks`` on ``model``, writing lm-eval results
    under ``OUT/eval/<base|final>``; None without tasks."""
    if not tasks:
        return None
    ev = cfg.evaluation
    backend = ev.backend or cfg.generation.backend
    if backend == "vllm" and ev.model_args.get("max_model_len"):
        _check_eval_context(int(ev.model_args["max_model_len"]), tasks, ev.gen_kwargs)
    out = cfg.output_dir / "eval" / ("base" if name == "eval_base" else "final")
    command = lm_eval_command(
        model, tasks, out, backend, ev.limit, {k: str(v) for k, v in ev.data_files.items()},
        ev.gen_kwargs, ev.model_args, ev.batch_size, backend_python(cfg, backend), ev.extra_args,
    )
    inputs: dict[str, Any] = {
        "data_files": {key: file_digest(path) for key, path in ev.data_files.items()},
    }
    if not upstream:
        inputs["base_model"] = model_fingerprint(model)
    stage_env = {**env, **cfg.generation.env} if backend == "vllm" else env
    return Stage(name, "eval", command, [out], cfg.output_dir / "logs" / f"{name}.log", inputs, upstream, stage_env)


def build_plan(cfg: RunConfig, machine_rank: int | None = None) -> Plan:
    """All stages of the run, in order, with their fingerprints."""
    run = cfg.output_dir
    notes: list[str] = []
    slices = data_slices(cfg)
    extra_yaml = _cpu_multiprocess_fix(cfg, notes)
    stages: list[Stage] = []
    fingerprints: dict[str, str] = {}
    env = {"AXOLOTL_DO_NOT_TRACK": "1", **cfg.env}

    def add(stage: Stage, hash_command: bool = True) -> Stage:
        stage.inputs = {**stage.inputs, "upstream": {name: fingerprints[name] for name in stage.upstream}}
        if hash_command:
            stage.inputs["command"] = stage.command
        if stage.yaml is not None:
            stage.inputs["yaml"] = stage.yaml
        stage.fingerprint = fingerprint(stage.inputs)
        fingerprints[stage.name] = stage.fingerprint
        stages.append(stage)
        return stage

    lc = cfg.training.launcher
    # what of the launch changes training results (not the machine rank or addresses)
    launcher_identity = {
        "num_processes": lc.num_processes, "num_machines": lc.num_machines, "extra_args": lc.extra_args,
        "config_file": file_digest(lc.config_file) if lc.config_file else None,
    }
    # the baseline first: it checks the evaluation settings before hours of training
    base_eval = evaluation_stage(cfg, "eval_base", cfg.base_model, cfg.evaluation.baseline_tasks, [], env)
    if base_eval:
        add(base_eval)
    model: str = cfg.base_model
    model_stage: str | None = None  # the stage that produced `model` (None: the external base)
    for t in range(1, cfg.rounds + 1):
        for phase in Phase:
            folder = run / f"round{t}" / phase.value
            data, content = slices[(t, phase)]
            data_inputs = {"data": {"file": str(data), "sha256": _digest_text(content)}}
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
                note = _short_context_note(cfg, yaml_cfg) if phase.has_cot else None
                if note and note not in notes:
                    notes.append(note)
                add(Stage(
                    f"{prefix}_traces", "traces",
                    traces_command(cfg, yaml_cfg, Path(model), data, phase, traces),
                    [traces, meta_path(traces)], run / "logs" / f"{prefix}_traces.log",
                    dict(data_inputs), list(upstream), {**env, **cfg.generation.env},
                ))
                upstream = [*upstream, f"{prefix}_traces"]
            schedule = training_schedule(yaml_cfg, cfg.data.num_rows, lc.num_processes, cfg.phase(phase).config)
            yaml_path = folder / "axolotl.yml"
            command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args(cfg, machine_rank),
                       "-m", "axolotl.cli.train", str(yaml_path)]
            inputs = {**data_inputs, "launcher": launcher_identity}
            if yaml_cfg.get("deepspeed") and Path(str(yaml_cfg["deepspeed"])).is_file():
                inputs["deepspeed"] = file_digest(Path(str(yaml_cfg["deepspeed"])))
            train = Stage(
                f"{prefix}_train", "train", command, [train_dir], run / "logs" / f"{prefix}_train.log",
                inputs, upstream, env, yaml_path, yaml_cfg, schedule=schedule,
            )
            add(train, hash_command=False)  # the launch line differs per machine; inputs keep what matters
            if yaml_cfg.get("adapter") == "lora":
                merged = folder / "model"
                args = AbsCoTArgs.from_cfg(yaml_cfg)
                add(Stage(
                    f"{prefix}_merge", "merge",
                    [sys.executable, "-m", "abscot_plugin.merge", str(train_dir), str(merged), "--base", model,
                     "--num-symbols", str(args.abscot_num_symbols), "--init", args.abscot_init,
                     "--init-seed", str(args.abscot_init_seed), "--dtype", cfg.merge.dtype],
                    [merged], run / "logs" / f"{prefix}_merge.log", {}, [train.name], env,
                ))
                model, model_stage = str(merged), f"{prefix}_merge"
            else:
                model, model_stage = str(train_dir), train.name
    final = Path(model)
    final_eval = evaluation_stage(cfg, "eval", model, cfg.evaluation.tasks, [model_stage], env)
    if final_eval:
        add(final_eval)
    return Plan(cfg, stages, {path: text for path, text in slices.values()}, final, notes)
