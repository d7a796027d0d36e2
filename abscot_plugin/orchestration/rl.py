"""The RL stage's inputs (run config section ``rl``): its prompt slice (:func:`rl_slice`), its
generated GRPO YAML (:func:`rl_yaml`) and its optimizer schedule (:func:`rl_schedule`).

The YAML is the GRPO template named by ``rl.config`` (e.g. ``axolotl_configs/tiny_grpo.yml``) with
``rl.overrides`` on top (:func:`rl_layers`) and the keys the orchestrator manages set per run:
``base_model`` (the warm-up model B_T), ``datasets[0].path`` (the prompt slice
``OUT/data/rl.jsonl``; the template's dataset ``type`` is kept), ``output_dir`` and
``dataset_prepared_path``, TensorBoard logging; the run's trace keys as in the warm-up
(``abscot_m_max`` = ``generation.m_max``) and ``abscot_rl_m_min`` = ``generation.m_min`` unless
the YAML sets it (:mod:`.trace_settings`). It is
checked before anything runs: ``rl: grpo``, one dataset, LoRA or full fine-tuning, a cosine or
constant learning-rate schedule (checked after training), valid ``abscot_*`` keys, a batch TRL
accepts; every prompt row has a problem and a gold answer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..core.fileio import file_digest
from ..rl.judge import CONFIG_ENV, JUDGE_REWARD, load_settings
from ..rl.rl_data import prompt_and_gold
from .run_config import PlanError, RunConfig
from .schedule import CONSTANT_SCHEDULERS, GRPOSchedule
from .slices import DataSlice
from .training import Layer, abscot_args, merge_layers, trace_keys

RL_M_MIN = "abscot_rl_m_min"  # the shortest trace a rollout samples (abscot_plugin.args.AbsCoTArgs)
# learning-rate schedules the RL stage's check knows (:mod:`.checks`): warm-up + cosine, constant
RL_SCHEDULERS = ("cosine", *CONSTANT_SCHEDULERS)


def rl_slice(cfg: RunConfig) -> DataSlice:
    """The prompt slice ``OUT/data/rl.jsonl``: the first ``rl.num_rows`` rows of ``rl.data`` (all
    without it), each checked for a problem and a gold answer (PlanError naming the row); read as
    a stream like the warm-up's slices (:mod:`.slices`)."""
    rl = cfg.rl
    digest, offset, count = hashlib.sha256(), None, 0
    with open(rl.data, "rb") as fh:
        position = 0
        for line in fh:
            start, position = position, position + len(line)
            if not line.strip():
                continue
            if count == rl.num_rows:
                break
            count += 1
            offset = start if offset is None else offset
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"RL prompts row {count - 1}: not a JSON object")
                prompt_and_gold(row, count - 1)  # as the GRPO dataset type reads it (0-based index)
            except ValueError as err:  # JSONDecodeError included
                raise PlanError(f"rl.data {rl.data}: {err}") from None
            digest.update(line.rstrip(b"\r\n") + b"\n")
    if offset is None:
        raise PlanError(f"rl.data {rl.data} has no rows")
    if rl.num_rows is not None and count < rl.num_rows:
        raise PlanError(f"rl.data {rl.data} has {count} rows; rl.num_rows is {rl.num_rows}")
    return DataSlice(cfg.output_dir / "data" / "rl.jsonl", rl.data, offset, count, digest.hexdigest())


def rl_layers(cfg: RunConfig) -> list[Layer]:
    """The layers of the RL YAML, lowest first: ``rl.config``, then ``rl.overrides``."""
    return [Layer.read(cfg.rl.config), Layer("rl.overrides", cfg.rl.overrides)]


def rl_yaml(cfg: RunConfig, base_model: str, data: Path, out_dir: Path, prepared: Path) -> dict[str, Any]:
    """The axolotl config of the RL training stage (module docstring)."""
    source, layers = cfg.rl.config, rl_layers(cfg)
    raw = layers[0].values
    if raw.get("rl") != "grpo":
        raise PlanError(f"{source}: rl is {raw.get('rl')!r}; the RL stage runs GRPO (set rl: grpo)")
    datasets = raw.get("datasets")
    if not isinstance(datasets, list) or len(datasets) != 1 or not isinstance(datasets[0], dict):
        raise PlanError(f"{source}: the RL stage needs exactly one dataset (the orchestrator points it at rl.data)")
    merged = merge_layers(layers)
    merged.update(
        base_model=base_model,
        datasets=[{**datasets[0], "path": str(data), "ds_type": "json"}],
        output_dir=str(out_dir),
        dataset_prepared_path=str(prepared),
        use_tensorboard=True,
        **trace_keys(cfg),
    )
    merged.setdefault(RL_M_MIN, cfg.generation.m_min)
    if merged.get("lr_scheduler") not in RL_SCHEDULERS:
        raise PlanError(
            f"{source}: lr_scheduler is {merged.get('lr_scheduler')!r}; the RL stage's learning rate is "
            f"checked after training as one of {list(RL_SCHEDULERS)}: set one"
        )
    if merged["lr_scheduler"] in CONSTANT_SCHEDULERS and not merged.get("learning_rate"):
        raise PlanError(f"{source}: set learning_rate (a constant schedule is checked against it)")
    reward_funcs = (merged.get("trl") or {}).get("reward_funcs") or []
    if (JUDGE_REWARD in reward_funcs) != (cfg.rl.judge is not None):
        raise PlanError(
            f"{source}: trl.reward_funcs {'names' if JUDGE_REWARD in reward_funcs else 'does not name'} "
            f"{JUDGE_REWARD}, and rl.judge (its settings file) is {'not ' if cfg.rl.judge is None else ''}set: "
            "set both or neither"
        )
    if merged.get("adapter") not in (None, "lora"):
        raise PlanError(
            f"{source}: adapter {merged.get('adapter')!r} is not supported (use lora, or none for full fine-tuning)"
        )
    abscot_args(merged, source)  # valid abscot_* keys (the merge reads them), one-line PlanError
    return merged


def judge_env_and_inputs(cfg: RunConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """With ``rl.judge``: the RL training stage's environment (``$ABSCOT_JUDGE_CONFIG``, which
    :func:`abscot_plugin.rl.judge.judge` reads) and fingerprint inputs (the settings and rubric files'
    digests); ``({}, {})`` without."""
    if cfg.rl.judge is None:
        return {}, {}
    rubric = load_settings(cfg.rl.judge).rubric
    return {CONFIG_ENV: str(cfg.rl.judge)}, {
        "judge": {"settings": file_digest(cfg.rl.judge), "rubric": file_digest(rubric)}
    }


def rl_schedule(yaml_cfg: dict[str, Any], rows: int, num_processes: int, source: Path) -> GRPOSchedule:
    """The :class:`~.schedule.GRPOSchedule` of the RL YAML (``source``: the template named in errors)."""
    try:
        return GRPOSchedule.of(yaml_cfg, rows, num_processes)
    except ValueError as exc:
        raise PlanError(f"{source}: {exc}") from None
