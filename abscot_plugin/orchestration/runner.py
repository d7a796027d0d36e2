"""Executing a plan: resume at the first unfinished stage, one subprocess per stage, checks after
each stage, the manifest and the run summary.

After a training stage, the optimizer steps the trainer took are checked against the plan's
schedule (:func:`check_trained_steps`), and its learning-rate curve against one warm-up + cosine.

A stage recorded in the manifest with the fingerprint the plan computes now is finished and is
never run again; one recorded with another fingerprint is stale: the run stops and reports what
changed, unless ``redo_stale`` moves the stale outputs to ``OUT/superseded/`` (nothing is
deleted) and redoes them. Partial outputs of an unfinished stage are cleared before it runs,
except trace files, whose generator resumes from its saved chunks.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from ..report import WARNING_PREFIX, build_report
from .curves import ScheduleError, check_warmup_cosine, plot_curve, read_curves
from ..fileio import write_atomic
from ..traces import read_meta, read_records
from .manifest import Manifest, diff_inputs
from .plan import Plan, Stage
from .schedule import Schedule

# Share of a slice's rows that must reach training: the rest may be skipped as bad rows (or
# dropped by axolotl); fewer means a wrong schedule (e.g. packed batches) or a data problem.
MIN_ROWS_TRAINED = 0.5


class StageFailed(RuntimeError):
    """A stage exited non-zero or its outputs failed a check."""


class StaleStages(RuntimeError):
    """Finished stages whose inputs changed since they ran."""


class Interrupted(RuntimeError):
    """SIGTERM or SIGINT arrived while a stage ran; the stage's processes were stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunLocked(RuntimeError):
    """Another orchestrator is working in the same run folder."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``OUT/.orchestrate.lock`` (flock) so that two orchestrators never share a run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".orchestrate.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"another orchestrate.py is running in {run_dir}") from None
        yield


def statuses(plan: Plan, manifest: Manifest) -> dict[str, str]:
    """done / stale / todo per stage."""
    out = {}
    for stage in plan.stages:
        record = manifest.get(stage.name)
        if record is None:
            out[stage.name] = "todo"
        else:
            out[stage.name] = "done" if record["fingerprint"] == stage.fingerprint else "stale"
    return out


def stale_report(plan: Plan, manifest: Manifest) -> str | None:
    """What changed for the first stale stage, or None when nothing is stale."""
    state = statuses(plan, manifest)
    stale = [s for s in plan.stages if state[s.name] == "stale"]
    if not stale:
        return None
    first = stale[0]
    changes = diff_inputs(manifest.get(first.name)["inputs"], first.inputs)
    shown = "; ".join(changes[:4]) + (f"; … {len(changes) - 4} more" if len(changes) > 4 else "")
    return (
        f"finished stage {first.name} was run with other inputs ({shown}); {len(stale)} finished "
        f"stage(s) are stale ({', '.join(s.name for s in stale)}). Restore the old settings, or rerun "
        f"with --redo-stale to move their outputs to {plan.run_dir / 'superseded'} and redo them"
    )


def describe(plan: Plan, manifest: Manifest) -> str:
    """The dry-run listing: every stage with its status, command, log, generated YAML and (training
    stages) optimizer steps and warm-up."""
    state = statuses(plan, manifest)
    lines = [f"run folder: {plan.run_dir}", f"final model: {plan.final_model}"]
    lines += [f"note: {note}" for note in plan.notes]
    for i, stage in enumerate(plan.stages, 1):
        lines.append(f"[{i:2d}] {stage.name:<12} {state[stage.name]:<5} log: {stage.log}")
        if stage.yaml_path:
            lines.append(f"     config: {stage.yaml_path}")
        if stage.schedule:
            lines.append(f"     schedule: {stage.schedule.describe()}")
        lines.append(f"     $ {stage.shell()}")
    return "\n".join(lines)


def _move_aside(plan: Plan, stage: Stage) -> None:
    target = plan.run_dir / "superseded" / f"{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for out in stage.outputs:
        if out.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out), str(target / out.name))


def _clear_partial(stage: Stage) -> None:
    if stage.kind == "traces":
        return  # the generator resumes from OUT.parts and refuses other settings itself
    for out in stage.outputs:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()


def _prepare_inputs(plan: Plan, stage: Stage) -> None:
    for path, text in plan.slices.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            write_atomic(path, text)
    if stage.yaml_path is not None:
        write_atomic(stage.yaml_path, yaml.safe_dump(stage.yaml, sort_keys=False))


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the stage's process group (launchers, ranks, vLLM workers), SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_subprocess(stage: Stage, log: Path) -> None:
    """Run ``stage.command`` in its own process group with its output in ``log``. SIGTERM or
    SIGINT to the orchestrator stops the whole group, so no training or vLLM process outlives it
    holding the GPUs (SIGKILL cannot be caught: kill the group, ``kill -9 -- -PGID``, see the log)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **stage.env}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"# stage {stage.name}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n# $ {stage.shell()}\n")
        fh.flush()
        proc = subprocess.Popen(stage.command, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        fh.write(f"# process group {proc.pid}\n")
        fh.flush()
        previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        except Interrupted:
            _stop_group(proc)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise StageFailed(f"stage {stage.name} failed with exit code {code}; log: {log}\n{tail}")


def _check_outputs(plan: Plan, stage: Stage) -> dict[str, Any]:
    """Stage-specific checks of what a finished subprocess wrote; returns metrics for the record."""
    if stage.kind == "train":
        return _check_training(plan, stage)
    if stage.kind == "traces":  # the generator validated every trace it wrote
        lengths = [record["length"] for record in read_records(stage.outputs[0])]
        summary = read_meta(stage.outputs[0])["summary"]
        return {
            "traces": len(lengths), "mean_symbols": round(sum(lengths) / max(1, len(lengths)), 1),
            "cots_cut": summary["cots_cut"], "short_context": summary["short_context"],
            "skipped_bad_rows": summary["skipped_bad_rows"],
            "prompts_per_s": round(summary["generated"] / max(summary["seconds"], 1e-9), 2),
        }
    if stage.kind == "eval":
        return _report(plan, stage)
    if stage.kind == "merge" and not (stage.outputs[0] / "config.json").exists():
        raise StageFailed(f"stage {stage.name}: no merged model in {stage.outputs[0]}")
    return {}


def report_path(plan: Plan) -> Path:
    """``OUT/eval/report.md``: the evaluation table of the run (next to the reference rows)."""
    return plan.run_dir / "eval" / "report.md"


def _report(plan: Plan, stage: Stage) -> dict[str, Any]:
    """Rewrite the run's evaluation report from every evaluation stage's results so far; returns
    this stage's accuracy and mean generated tokens per task for the manifest."""
    labels = {"eval_base": "base model", "eval": f"warm-up model, T {plan.cfg.rounds}"}
    done = [s for s in plan.stages if s.kind == "eval" and s.outputs[0].exists()]
    path = report_path(plan)
    try:
        rows = build_report([f"{labels[s.name]}={s.outputs[0]}" for s in done], path, path.with_suffix(".png"))
    except FileNotFoundError as exc:  # this stage's lm-eval run wrote no results file
        raise StageFailed(f"stage {stage.name}: {exc}") from None
    metrics: dict[str, Any] = {}
    for row in rows:
        if row.run == labels[stage.name]:
            metrics[f"{row.task} accuracy"] = row.metrics["accuracy"]
            metrics[f"{row.task} tokens"] = row.metrics["total_tokens"]
    return metrics


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
        expected = (f"{schedule.steps} for {schedule.rows} rows (at least {low} if only "
                    f"{MIN_ROWS_TRAINED:.0%} of them reach training)")
        ok = low <= logged <= schedule.steps
    if not ok:
        raise StageFailed(
            f"stage {name}: the trainer ran {logged} optimizer steps; the plan expects {expected} with "
            f"a batch of {schedule.batch} examples: the batch or the data is not what was planned, see the log"
        )


def _check_training(plan: Plan, stage: Stage) -> dict[str, Any]:
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
        check_warmup_cosine(lr, float(stage.yaml.get("learning_rate") or 0) or None)
    except ScheduleError as exc:
        raise StageFailed(f"stage {stage.name}: {exc}; plot: {plots / f'{stage.name}_lr.png'}") from None
    return {
        "steps": steps, "steps_planned": stage.schedule.steps, "loss_first": round(loss.values[0], 4),
        "loss_last": round(loss.values[-1], 4), "lr_peak": max(lr.values), "lr_last": lr.values[-1],
    }


def write_summary(plan: Plan, manifest: Manifest) -> Path:
    """``OUT/SUMMARY.md``: stages, their timings, planned schedules and metrics, the plots, the
    evaluation table and the final model."""
    state = statuses(plan, manifest)
    lines = [
        f"# Abstract-CoT warm-up: {plan.run_dir.name}", "",
        f"- rounds T = {plan.cfg.rounds}, N = {plan.cfg.data.num_rows} rows per phase "
        f"(schedule {plan.cfg.data.schedule}), generation backend {plan.cfg.generation.backend}",
        f"- final (warm-up) model: `{plan.final_model}`"
        + ("" if state[plan.stages[-1].name] == "done" else " (not finished yet)"), "",
        "| stage | status | seconds | planned | metrics | log |", "|---|---|---|---|---|---|",
    ]
    for stage in plan.stages:
        record = manifest.get(stage.name) if state[stage.name] == "done" else None
        metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in (record or {}).get("metrics", {}).items())
        seconds = f"{record['seconds']:.0f}" if record else ""
        log = stage.log.relative_to(plan.run_dir)
        planned = stage.schedule.short() if stage.schedule else ""
        lines.append(f"| {stage.name} | {state[stage.name]} | {seconds} | {planned} | {metrics} | `{log}` |")
    trained = [s for s in plan.stages if s.kind == "train" and state[s.name] == "done"]
    if trained:
        lines += ["", "## Training curves (loss, learning rate)", ""]
        lines += [f"![{s.name} loss](plots/{s.name}_loss.png) ![{s.name} lr](plots/{s.name}_lr.png)" for s in trained]
    report = report_path(plan)
    if report.exists():
        text = report.read_text(encoding="utf-8").splitlines()
        table = [ln for ln in text if ln.startswith("|")]
        warnings = [ln for ln in text if ln.startswith(WARNING_PREFIX)]
        lines += ["", "## Evaluation (`eval/report.md`)", "", *table, "", *[f"{w}\n" for w in warnings],
                  "![accuracy vs tokens](eval/report.png)"]
    path = plan.run_dir / "SUMMARY.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def run_plan(plan: Plan, manifest: Manifest, redo_stale: bool = False) -> Path:
    """Run every unfinished stage in order; returns the summary path."""
    report = stale_report(plan, manifest)
    if report and not redo_stale:
        raise StaleStages(report)
    state = statuses(plan, manifest)
    for stage in plan.stages:
        if state[stage.name] == "stale":
            _move_aside(plan, stage)
            manifest.forget(stage.name)
    for stage in plan.stages:
        if state[stage.name] == "done":
            print(f"[done]  {stage.name}", flush=True)
            continue
        print(f"[run]   {stage.name}  (log: {stage.log})", flush=True)
        started = time.time()
        _clear_partial(stage)
        _prepare_inputs(plan, stage)
        _run_subprocess(stage, stage.log)
        metrics = _check_outputs(plan, stage)
        manifest.record(stage.name, stage.fingerprint, stage.inputs, [str(p) for p in stage.outputs],
                        started, str(stage.log), metrics)
        write_summary(plan, manifest)
        print(f"[ok]    {stage.name}  {time.time() - started:.0f} s", flush=True)
    return write_summary(plan, manifest)


def run_worker(plan: Plan, manifest_path: Path, machine_rank: int, poll_s: float = 10.0) -> None:
    """Machine ``machine_rank`` > 0 of a multi-node run (shared filesystem): for each training
    stage, wait until rank 0 has finished its upstream stages, join the launch, then wait until
    rank 0 has recorded the stage (so no rank runs ahead)."""

    def wait_for(names: list[str]) -> None:
        while True:
            manifest = Manifest(manifest_path)
            if all((manifest.get(n) or {}).get("fingerprint") == plan.stage(n).fingerprint for n in names):
                return
            time.sleep(poll_s)

    for stage in (s for s in plan.stages if s.kind == "train"):
        wait_for(stage.upstream)
        if (Manifest(manifest_path).get(stage.name) or {}).get("fingerprint") == stage.fingerprint:
            continue
        print(f"[join]  {stage.name} as machine {machine_rank}", flush=True)
        _prepare_inputs(plan, stage)
        _run_subprocess(stage, stage.log.with_name(f"{stage.name}.rank{machine_rank}.log"))
        wait_for([stage.name])
