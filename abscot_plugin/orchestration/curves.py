"""Training curves from the trainer's TensorBoard logs: reading, the learning-rate schedule check,
and PNG plots.

The orchestrator sets ``use_tensorboard: true``; the Hugging Face trainer (rank 0 only) then
writes ``train/loss`` and ``train/learning_rate`` per logging step under ``OUTPUT_DIR/runs/``, and
``train/train_runtime`` once, at its last optimizer step (the steps it took, whatever
``logging_steps`` is).
The logged learning rate is the one each optimizer step used, so a warm-up + cosine schedule
shows as one rise to the peak followed by a monotone descent. The reproduction's multi-process
bug (the scheduler stepped once per process per step) shows as a descent that finishes early and
climbs back: :func:`check_warmup_cosine` refuses both that and a cosine that never finished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..eval.report import pyplot, save_png

TAGS = {"loss": "train/loss", "learning_rate": "train/learning_rate", "train_runtime": "train/train_runtime"}
# logged by TRL's GRPO trainer only: the mean total reward, each reward function's mean
# (``rewards/<name>/mean``) and the KL to the reference model; read when present
GRPO_TAGS = re.compile(r"train/(reward|rewards/[^/]+/mean|kl)")


class ScheduleError(RuntimeError):
    """A learning-rate curve that is not a single warm-up + cosine."""


@dataclass(frozen=True)
class Curve:
    steps: list[int]
    values: list[float]


def read_curves(train_dir: str | Path) -> dict[str, Curve]:
    """Loss, learning rate and the end-of-training runtime per logged step, from the newest
    TensorBoard run in ``train_dir``; a GRPO run's rewards and KL too (:data:`GRPO_TAGS`, named
    without ``train/``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(
        {p.parent for p in Path(train_dir, "runs").rglob("events.out.tfevents.*")},
        key=lambda p: max(f.stat().st_mtime for f in p.glob("events.out.tfevents.*")),
    )
    if not runs:
        raise FileNotFoundError(f"no TensorBoard logs under {train_dir}/runs (use_tensorboard must be on)")
    events = EventAccumulator(str(runs[-1]), size_guidance={"scalars": 0})
    events.Reload()
    available = set(events.Tags()["scalars"])
    missing = sorted(set(TAGS.values()) - available)
    if missing:
        raise ValueError(f"{runs[-1]}: the trainer logged no {missing[0]}")
    grpo = {tag.removeprefix("train/"): tag for tag in sorted(available) if GRPO_TAGS.fullmatch(tag)}
    curves = {}
    for name, tag in {**TAGS, **grpo}.items():
        scalars = sorted(events.Scalars(tag), key=lambda e: e.step)
        curves[name] = Curve([e.step for e in scalars], [float(e.value) for e in scalars])
    return curves


def check_warmup_cosine(curve: Curve, peak_lr: float | None = None, rel_tol: float = 1e-4) -> None:
    """Raise :class:`ScheduleError` unless ``curve`` rises (warm-up) to one peak, then only falls,
    and (with two or more steps after the peak) ends at or below half the peak, as a cosine that
    ran to the end does. ``peak_lr``: the configured learning rate, which the curve may not exceed.
    """
    lrs, steps = curve.values, curve.steps
    if not lrs:
        raise ScheduleError("no learning rate was logged")
    peak = max(lrs)
    top = lrs.index(peak)
    tol = rel_tol * peak
    for i in range(1, top + 1):
        if lrs[i] < lrs[i - 1] - tol:
            raise ScheduleError(
                f"learning rate falls during warm-up: step {steps[i - 1]} {lrs[i - 1]:.4g} -> "
                f"step {steps[i]} {lrs[i]:.4g}, before the peak {peak:.4g} at step {steps[top]}"
            )
    for i in range(top + 1, len(lrs)):
        if lrs[i] > lrs[i - 1] + tol:
            raise ScheduleError(
                f"learning rate rises again after the peak {peak:.4g} (step {steps[top]}): step "
                f"{steps[i - 1]} {lrs[i - 1]:.4g} -> step {steps[i]} {lrs[i]:.4g}; the schedule is "
                "not one warm-up + cosine (was it stepped once per process?)"
            )
    if len(lrs) - top > 2 and lrs[-1] > 0.5 * peak + tol:
        raise ScheduleError(
            f"the cosine did not run to the end: last learning rate {lrs[-1]:.4g} at step "
            f"{steps[-1]} is above half the peak {peak:.4g}"
        )
    if peak_lr is not None and peak > peak_lr * (1 + rel_tol):
        raise ScheduleError(f"learning rate peaks at {peak:.4g}, above the configured {peak_lr:.4g}")


def check_constant(curve: Curve, lr: float, warmup: int = 0, rel_tol: float = 1e-4) -> None:
    """Raise :class:`ScheduleError` unless the learning rate rises to at most ``lr`` over the first
    ``warmup`` steps (``constant_with_warmup``; transformers' ``constant`` has none) and is ``lr``
    from the step after, at every logged step."""
    if not curve.values:
        raise ScheduleError("no learning rate was logged")
    tol, previous = rel_tol * lr, 0.0
    for step, value in zip(curve.steps, curve.values, strict=True):
        if step > warmup + 1 and abs(value - lr) > tol:
            raise ScheduleError(f"learning rate {value:.4g} at step {step}; the configured constant is {lr:.4g}")
        if step <= warmup + 1 and not previous - tol <= value <= lr + tol:
            raise ScheduleError(f"learning rate {value:.4g} at step {step} of the warm-up to {lr:.4g} is not rising")
        previous = value


def plot_curve(curve: Curve, title: str, ylabel: str, path: str | Path) -> Path:
    """Write a line plot of ``curve`` to ``path`` (PNG, atomically)."""
    path = Path(path)
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot(curve.steps, curve.values, marker="." if len(curve.steps) <= 50 else None)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    save_png(fig, path, dpi=100)
    return path
