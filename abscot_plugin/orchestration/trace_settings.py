"""The run's trace settings: one home, the run config's ``generation`` section (``m_min``,
``m_max``, ``temperature``, ``top_p``, ``seed``), which every stage that samples a trace or keeps
room for one reads.

* trace stages: ``--m-min`` … ``--seed`` (:func:`.commands.traces_command`); ``--m-max`` is also
  the room a Phase A prefix keeps for the trace, as the Phase A training's rows do;
* training stages: ``abscot_m_max`` = ``generation.m_max`` in every warm-up YAML and the RL YAML
  (:func:`.training.trace_keys`); the RL YAML's ``abscot_rl_m_min`` is ``generation.m_min`` unless
  it sets one;
* evaluation stages with an abstract task: the tasks' trace keys (:data:`TRACE_GEN_KWARGS`) come
  from ``generation`` where ``evaluation.gen_kwargs`` does not set them (:func:`eval_gen_kwargs`);
  a stage of verbal tasks only gets none of them.

:func:`check_trace_settings`, run once per plan, refuses what would disagree, naming both values
and where each was set: a phase or RL YAML (or an override) that states another ``abscot_m_max``,
an evaluation ``m_max`` above training's, an ``m_min`` above its ``m_max``. For example, a phase
YAML with ``abscot_m_max: 128`` under ``generation.m_max: 16``::

    abscot_m_max 128 (axolotl_configs/tiny_phase_a.yml: abscot_m_max) is not generation.m_max 16: …
"""

from __future__ import annotations

from typing import Any

from ..core.choices import Phase
from ..core.traces import TraceSettings
from ..eval.eval_cli import TRACE_GEN_KWARGS, is_abstract, task_generation_kwargs
from .rl import RL_M_MIN, rl_layers
from .run_config import PlanError, RunConfig
from .training import TRACE_KEYS, phase_layers, stated, trace_keys


def eval_trace_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The abstract tasks' trace keys as ``generation`` sets them, e.g. ``{"m_min": 16, "m_max":
    128, "trace_temperature": 0.7, "trace_top_p": 1.0, "trace_seed": 0}``."""
    settings = cfg.generation.trace_settings()
    return {key: getattr(settings, field) for key, field in TRACE_GEN_KWARGS.items()}


def eval_gen_kwargs(cfg: RunConfig, tasks: list[str]) -> dict[str, Any]:
    """The ``--gen_kwargs`` of an evaluation of ``tasks``: ``evaluation.gen_kwargs`` on top of the
    run's trace keys (:func:`eval_trace_kwargs`) when a task decodes an abstract trace; without one,
    ``evaluation.gen_kwargs`` alone. An unknown task is a PlanError."""
    try:
        settings = task_generation_kwargs(tasks)
    except ValueError as exc:
        raise PlanError(f"evaluation: {exc}") from None
    if not any(is_abstract(task) for task in settings.values()):
        return dict(cfg.evaluation.gen_kwargs)
    return {**eval_trace_kwargs(cfg), **cfg.evaluation.gen_kwargs}


def check_trace_settings(cfg: RunConfig) -> None:
    """The one plan-time check of the run's trace settings (module docstring); PlanError naming
    both values and where each was set."""
    g = cfg.generation
    yamls = [phase_layers(cfg, phase) for phase in Phase]
    if cfg.rl is not None:
        yamls.append(rl_layers(cfg))
    for layers in yamls:
        for key, value in trace_keys(cfg).items():
            found = stated(layers, key)
            if found is not None and found.value != value:
                raise PlanError(
                    f"{key} {found.value} ({found.where}) is not generation.{TRACE_KEYS[key]} {value}: the "
                    "run's trace settings are its generation section, which the orchestrator writes into every "
                    f"training YAML; set generation.{TRACE_KEYS[key]}: {found.value}, or drop {key} (an "
                    f"override of null removes it, e.g. training.overrides: {{{key}: null}})"
                )
    if cfg.rl is not None:
        found = stated(yamls[-1], RL_M_MIN)
        if found is not None and _number(found.value, found.where, int) > g.m_max:
            raise PlanError(
                f"{RL_M_MIN} {found.value} ({found.where}) > generation.m_max {g.m_max} (the RL YAML's "
                "abscot_m_max): need m_min <= m_max"
            )
    _check_evaluation(cfg)


def _check_evaluation(cfg: RunConfig) -> None:
    """``evaluation.gen_kwargs``' trace keys: numbers, ``m_max`` at most training's, ``m_min`` at
    most ``m_max``, valid stage-1 settings with the run's filled in."""
    g, explicit = cfg.generation, cfg.evaluation.gen_kwargs
    values, names = {}, {}
    for key, field in TRACE_GEN_KWARGS.items():
        if key in explicit:
            names[field] = f"evaluation.gen_kwargs.{key}"
            values[field] = _number(explicit[key], names[field], type(getattr(TraceSettings, field)))
        else:
            names[field], values[field] = f"generation.{field}", getattr(g, field)
    if "m_max" in explicit and values["m_max"] > g.m_max:
        raise PlanError(
            f"evaluation.gen_kwargs.m_max {values['m_max']} exceeds the training's abscot_m_max {g.m_max} "
            "(generation.m_max): the models were trained on traces of at most that many symbols; lower it "
            "or raise generation.m_max"
        )
    if values["m_min"] > values["m_max"]:
        raise PlanError(
            f"evaluation m_min {values['m_min']} ({names['m_min']}) > m_max {values['m_max']} ({names['m_max']}): "
            "need m_min <= m_max"
        )
    try:
        TraceSettings(**values)
    except ValueError as exc:
        raise PlanError(f"evaluation.gen_kwargs: {exc}") from None


def _number(value: Any, where: str, kind: type) -> Any:
    """``value`` as a ``kind`` (int or float), as the abscot models read it; PlanError naming
    ``where`` otherwise."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise PlanError(f"{where}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None
