"""Executing a plan: resume at the first unfinished stage, one subprocess per stage (in its own
process group, stopped with the orchestrator), the stage's check (:mod:`.checks`), its record in
the manifest, SUMMARY.md after every stage (:mod:`.summary`), and the lock on the run folder.

A stage recorded in the manifest with the fingerprint the plan computes now is finished and is
never run again; one recorded with another fingerprint is stale: the run stops and reports what
changed, unless ``redo_stale`` moves the stale outputs to ``OUT/superseded/`` (nothing is
deleted) and redoes them. Partial outputs of an unfinished stage are cleared before it runs,
except those of a resumable stage (trace files: the generator resumes from its saved chunks).
"""

from __future__ import annotations

import fcntl
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

from ..core.fileio import write_atomic
from ..core.processes import stop_group
from .checks import CHECKS, StageFailed
from .manifest import Manifest, diff_inputs
from .plan import Plan, Stage, statuses
from .slices import prepare_slice
from .summary import write_summary


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


def _move_aside(plan: Plan, stage: Stage) -> None:
    target = plan.run_dir / "superseded" / f"{stage.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for out in stage.outputs:
        if out.exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(str(out), str(target / out.name))


def _clear_partial(stage: Stage) -> None:
    if stage.resumable:
        return  # e.g. the trace generator resumes from OUT.parts and refuses other settings itself
    for out in stage.outputs:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()


def _prepare_slices(plan: Plan) -> None:
    """Write the data slices whose files do not hold their rows (streamed: :mod:`.slices`)."""
    for piece in plan.slices.values():
        prepare_slice(piece)


def _prepare_inputs(stage: Stage) -> None:
    if stage.yaml_path is not None:
        write_atomic(stage.yaml_path, yaml.safe_dump(stage.yaml, sort_keys=False))


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


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
            stop_group(proc)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise StageFailed(f"stage {stage.name} failed with exit code {code}; log: {log}\n{tail}")


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
    if any(state[stage.name] != "done" for stage in plan.stages):
        _prepare_slices(plan)
    for stage in plan.stages:
        if state[stage.name] == "done":
            print(f"[done]  {stage.name}", flush=True)
            continue
        print(f"[run]   {stage.name}  (log: {stage.log})", flush=True)
        started = time.time()
        _clear_partial(stage)
        _prepare_inputs(stage)
        _run_subprocess(stage, stage.log)
        metrics = CHECKS[stage.kind](plan, stage)
        manifest.record(
            stage.name,
            stage.fingerprint,
            stage.inputs,
            [str(p) for p in stage.outputs],
            started,
            str(stage.log),
            metrics,
        )
        write_summary(plan, manifest)
        print(f"[ok]    {stage.name}  {time.time() - started:.0f} s", flush=True)
    return write_summary(plan, manifest)


def run_worker(plan: Plan, manifest_path: Path, machine_rank: int, poll_s: float = 10.0) -> None:
    """Machine ``machine_rank`` > 0 of a multi-node run (shared filesystem): for each training
    stage, and each trace stage when ``generation.num_nodes`` > ``machine_rank``, wait until rank 0
    has finished its upstream stages, join it (the launch, or this node's generation workers),
    then wait until rank 0 has recorded the stage (so no rank runs ahead)."""

    def wait_for(names: list[str]) -> None:
        while True:
            manifest = Manifest(manifest_path)
            if all((manifest.get(n) or {}).get("fingerprint") == plan.stage(n).fingerprint for n in names):
                return
            time.sleep(poll_s)

    kinds = {"train", "traces"} if machine_rank < plan.cfg.generation.num_nodes else {"train"}
    _prepare_slices(plan)
    for stage in (s for s in plan.stages if s.kind in kinds):
        wait_for(stage.upstream)
        if (Manifest(manifest_path).get(stage.name) or {}).get("fingerprint") == stage.fingerprint:
            continue
        print(f"[join]  {stage.name} as machine {machine_rank}", flush=True)
        _prepare_inputs(stage)
        _run_subprocess(stage, stage.log.with_name(f"{stage.name}.rank{machine_rank}.log"))
        wait_for([stage.name])
