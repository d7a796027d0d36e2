"""What a run shows of itself: the dry-run listing (:func:`describe`), ``OUT/SUMMARY.md``
(:func:`write_summary`: stages, timings, planned schedules, metrics, plots, the evaluation table)
and the evaluation report ``OUT/eval/report.md`` (:func:`write_eval_report`)."""

from __future__ import annotations

from pathlib import Path

from ..core.fileio import write_atomic
from ..eval.report import WARNING_PREFIX, Row, build_report
from .commands import gpu_layout
from .manifest import Manifest
from .plan import RL_STAGES, Plan, statuses


def describe(plan: Plan, manifest: Manifest) -> str:
    """The dry-run listing: the GPU layout, then every stage with its status, command, log,
    generated YAML and (training stages) optimizer steps and warm-up."""
    state = statuses(plan, manifest)
    lines = [f"run folder: {plan.run_dir}", f"final model: {plan.final_model}", gpu_layout(plan.cfg)]
    lines += [f"RL model: {plan.rl_model}"] if plan.rl_model else []
    lines += [f"note: {note}" for note in plan.notes]
    for i, stage in enumerate(plan.stages, 1):
        lines.append(f"[{i:2d}] {stage.name:<12} {state[stage.name]:<5} log: {stage.log}")
        if stage.yaml_path:
            lines.append(f"     config: {stage.yaml_path}")
        if stage.schedule:
            lines.append(f"     schedule: {stage.schedule.describe()}")
        lines.append(f"     $ {stage.shell()}")
    return "\n".join(lines)


def report_path(plan: Plan) -> Path:
    """``OUT/eval/report.md``: the evaluation table of the run (next to the reference rows)."""
    return plan.run_dir / "eval" / "report.md"


def eval_label(plan: Plan, stage_name: str) -> str:
    """How the report names the model an evaluation stage evaluated."""
    return {
        "eval_base": "base model",
        "eval": f"warm-up model, T {plan.cfg.rounds}",
        "rl_eval": f"warm-up + RL model, T {plan.cfg.rounds}",
    }[stage_name]


def write_eval_report(plan: Plan) -> list[Row]:
    """Rewrite the run's evaluation report (and its plot) from the results of every evaluation
    stage so far; returns the report's rows. FileNotFoundError: a stage wrote no results file."""
    done = [s for s in plan.stages if s.kind == "eval" and s.outputs[0].exists()]
    path = report_path(plan)
    return build_report([f"{eval_label(plan, s.name)}={s.outputs[0]}" for s in done], path, path.with_suffix(".png"))


def write_summary(plan: Plan, manifest: Manifest) -> Path:
    """``OUT/SUMMARY.md``: stages, their timings, planned schedules and metrics, the plots, the
    evaluation table and the final model."""
    state = statuses(plan, manifest)
    lines = [
        f"# Abstract-CoT warm-up: {plan.run_dir.name}",
        "",
        f"- rounds T = {plan.cfg.rounds}, N = {plan.cfg.data.num_rows} rows per phase "
        f"(schedule {plan.cfg.data.schedule}), generation backend {plan.cfg.generation.backend}",
        f"- final (warm-up) model: `{plan.final_model}`"
        + (
            ""
            if all(state[s.name] == "done" for s in plan.stages if s.name not in RL_STAGES)
            else " (not finished yet)"
        ),
        *(
            [f"- RL model (GRPO from the warm-up model, `{plan.cfg.rl.config.name}`): `{plan.rl_model}`"]
            if plan.rl_model
            else []
        ),
        "",
        "| stage | status | seconds | planned | metrics | log |",
        "|---|---|---|---|---|---|",
    ]
    for stage in plan.stages:
        record = manifest.get(stage.name) if state[stage.name] == "done" else None
        metrics = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (record or {}).get("metrics", {}).items()
        )
        seconds = f"{record['seconds']:.0f}" if record else ""
        log = stage.log.relative_to(plan.run_dir)
        planned = stage.schedule.short() if stage.schedule else ""
        lines.append(f"| {stage.name} | {state[stage.name]} | {seconds} | {planned} | {metrics} | `{log}` |")
    trained = [s for s in plan.stages if s.kind == "train" and state[s.name] == "done"]
    if trained:
        lines += ["", "## Training curves (loss, learning rate)", ""]
        lines += [f"![{s.name} loss](plots/{s.name}_loss.png) ![{s.name} lr](plots/{s.name}_lr.png)" for s in trained]
        lines += [
            f"![{s.name} reward](plots/{s.name}_reward.png)"
            for s in trained
            if (plan.run_dir / "plots" / f"{s.name}_reward.png").exists()
        ]
    report = report_path(plan)
    if report.exists():
        text = report.read_text(encoding="utf-8").splitlines()
        table = [ln for ln in text if ln.startswith("|")]
        warnings = [ln for ln in text if ln.startswith(WARNING_PREFIX)]
        lines += [
            "",
            "## Evaluation (`eval/report.md`)",
            "",
            *table,
            "",
            *[f"{w}\n" for w in warnings],
            "![accuracy vs tokens](eval/report.png)",
        ]
    path = plan.run_dir / "SUMMARY.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
