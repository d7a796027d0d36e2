"""What a finished stage must have written, by stage kind: each check raises :class:`StageFailed`
or returns the metrics the manifest records for the stage (and SUMMARY.md shows).

* ``train``: the model or adapter; the optimizer steps the trainer took against the plan's
  schedule (:func:`check_trained_steps`); the learning rate as one warm-up + cosine (or a constant,
  with or without warm-up, which the RL stage allows); loss and learning-rate plots; for GRPO (the
  RL stage) also the rewards and KL, and a reward plot;
* ``traces``: the trace file and its counts (the generator validated every trace it wrote);
* ``merge``: the merged model;
* ``eval``: the lm-eval results, turned into the run's evaluation report.

A new stage kind registers its check in :data:`CHECKS` (see :mod:`.commands`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..core.traces import read_meta, read_records
from .curves import TAGS, ScheduleError, check_constant, check_warmup_cosine, plot_curve, read_curves
from .plan import Plan, Stage
from .schedule import CONSTANT_SCHEDULERS, Schedule
from .summary import eval_label, write_eval_report

# Share of a slice's rows that must reach training: the rest may be skipped as bad rows (or
# dropped by axolotl); fewer means a wrong schedule (e.g. packed batches) or a data problem.
MIN_ROWS_TRAINED = 0.5


class StageFailed(RuntimeError):
    """A stage exited non-zero or its outputs failed a check."""


def check_trained_steps(name: str, logged: int, schedule: Schedule) -> None:
    """Raise :class:`StageFailed` unless the trainer's optimizer steps ``logged`` fit the plan's
    ``schedule``: exactly its steps with ``max_steps``; otherwise between the steps of
    :data:`MIN_ROWS_TRAINED` of the rows and of all rows. Rows skipped as bad (or dropped as too
    long) lower the steps and nothing else can raise them, so more steps mean a smaller batch
    than planned, and far fewer a larger one (packed micro-batches) or most rows lost."""
    if schedule.max_steps:
        expected, ok = f"{schedule.steps} (max_steps)", logged == schedule.steps
    else:
        low = schedule.steps_for(math.ceil(MIN_ROWS_TRAINED * schedule.rows))
        expected = (
            f"{schedule.steps} for {schedule.rows} rows (at least {low} if only "
            f"{MIN_ROWS_TRAINED:.0%} of them reach training)"
        )
        ok = low <= logged <= schedule.steps
    if not ok:
        raise StageFailed(
            f"stage {name}: the trainer ran {logged} optimizer steps; the plan expects {expected} with "
            f"a batch of {schedule.batch} examples: the batch or the data is not what was planned, see the log"
        )


def check_training(plan: Plan, stage: Stage) -> dict[str, Any]:
    """The trainer's output, its steps and learning-rate curve; plots of loss and learning rate."""
    train_dir = stage.outputs[0]
    expected = "adapter_config.json" if stage.yaml.get("adapter") == "lora" else "config.json"
    if not (train_dir / expected).exists():
        raise StageFailed(f"stage {stage.name}: the trainer wrote no {expected} in {train_dir}")
    curves = read_curves(train_dir)
    plots = plan.run_dir / "plots"
    plot_curve(curves["loss"], f"{stage.name}: training loss", "loss", plots / f"{stage.name}_loss.png")
    plot_curve(curves["learning_rate"], f"{stage.name}: learning rate", "learning rate", plots / f"{stage.name}_lr.png")
    lr, loss = curves["learning_rate"], curves["loss"]
    steps = curves["train_runtime"].steps[-1]
    check_trained_steps(stage.name, steps, stage.schedule)
    try:
        if stage.yaml.get("lr_scheduler") in CONSTANT_SCHEDULERS:  # the RL stage allows them (:mod:`.rl`)
            check_constant(lr, float(stage.yaml["learning_rate"]), stage.schedule.warmup)
        else:
            check_warmup_cosine(lr, float(stage.yaml.get("learning_rate") or 0) or None)
    except ScheduleError as exc:
        raise StageFailed(f"stage {stage.name}: {exc}; plot: {plots / f'{stage.name}_lr.png'}") from None
    metrics = {
        "steps": steps,
        "steps_planned": stage.schedule.steps,
        "loss_first": round(loss.values[0], 4),
        "loss_last": round(loss.values[-1], 4),
        "lr_peak": max(lr.values),
        "lr_last": lr.values[-1],
    }
    for name in sorted(set(curves) - set(TAGS)):  # GRPO: rewards and KL, first and last logged value
        metrics[f"{name} first"] = round(curves[name].values[0], 4)
        metrics[f"{name} last"] = round(curves[name].values[-1], 4)
    if "reward" in curves:
        plot_curve(curves["reward"], f"{stage.name}: mean reward", "reward", plots / f"{stage.name}_reward.png")
    return metrics


def check_traces(plan: Plan, stage: Stage) -> dict[str, Any]:
    """The trace file's size and mean length, and the generator's counts."""
    traces = symbols = 0
    for record in read_records(stage.outputs[0]):  # streamed: memory flat in the number of rows
        traces, symbols = traces + 1, symbols + record["length"]
    summary = read_meta(stage.outputs[0])["summary"]
    return {
        "traces": traces,
        "mean_symbols": round(symbols / max(1, traces), 1),
        "cots_cut": summary["cots_cut"],
        "short_context": summary["short_context"],
        "skipped_bad_rows": summary["skipped_bad_rows"],
        "prompts_per_s": round(summary["generated"] / max(summary["seconds"], 1e-9), 2),
    }


def check_merge(plan: Plan, stage: Stage) -> dict[str, Any]:
    """A merged model folder."""
    if not (stage.outputs[0] / "config.json").exists():
        raise StageFailed(f"stage {stage.name}: no merged model in {stage.outputs[0]}")
    return {}


def check_eval(plan: Plan, stage: Stage) -> dict[str, Any]:
    """Rewrite the run's evaluation report with this stage's results; its accuracy and mean
    generated tokens per task."""
    try:
        rows = write_eval_report(plan)
    except FileNotFoundError as exc:  # this stage's lm-eval run wrote no results file
        raise StageFailed(f"stage {stage.name}: {exc}") from None
    metrics: dict[str, Any] = {}
    for row in rows:
        if row.run == eval_label(plan, stage.name):
            metrics[f"{row.task} accuracy"] = row.metrics["accuracy"]
            metrics[f"{row.task} tokens"] = row.metrics["total_tokens"]
    return metrics


CHECKS: dict[str, Callable[[Plan, Stage], dict[str, Any]]] = {
    "train": check_training,
    "traces": check_traces,
    "merge": check_merge,
    "eval": check_eval,
}
