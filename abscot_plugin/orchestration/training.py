"""A training stage's inputs: its generated axolotl YAML (:func:`phase_yaml`) and the optimizer
schedule axolotl will derive from it (:func:`training_schedule`).

The YAML is the phase config named in the run config, with the run's overrides on top (its
:class:`Layer` s, :func:`phase_layers`), the keys the orchestrator manages set per stage (model,
data, traces, folders, TensorBoard logging) and the run's trace keys written in (:func:`trace_keys`:
``abscot_m_max`` is ``generation.m_max``; :mod:`.trace_settings` refuses a layer that states
another). It is checked here, before anything runs: one dataset of the phase's type, a cosine
schedule, LoRA or full fine-tuning, valid ``abscot_*`` keys, rows named as the trace stages name them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from ..args import AbsCoTArgs
from ..core.choices import Phase
from .run_config import MANAGED_KEYS, PlanError, RunConfig, one_line
from .schedule import Schedule

# the trace keys of every training YAML (warm-up and RL) -> the generation field that sets them
TRACE_KEYS = {"abscot_m_max": "m_max"}


@dataclass(frozen=True)
class Layer:
    """One layer of a generated training YAML: a config file (``is_file``) or a run-config
    overrides section named by its key path (``source``, e.g. ``training.overrides``)."""

    source: str
    values: dict[str, Any]
    is_file: bool = False

    @classmethod
    def read(cls, path: Path) -> Layer:
        """The layer of the YAML file ``path``."""
        return cls(str(path), yaml.safe_load(path.read_text(encoding="utf-8")) or {}, is_file=True)

    def where(self, key: str) -> str:
        """Where this layer sets ``key``, as errors name it: ``FILE: key`` or ``training.overrides.key``."""
        return f"{self.source}: {key}" if self.is_file else f"{self.source}.{key}"


class Stated(NamedTuple):
    """A key's value in a stack of layers, and where it was set."""

    value: Any
    where: str


def phase_layers(cfg: RunConfig, phase: Phase) -> list[Layer]:
    """The layers of ``phase``'s training YAMLs, lowest first: its phase config, then
    ``training.overrides``, then ``phase_<x>.overrides``."""
    source = cfg.phase(phase)
    return [
        Layer.read(source.config),
        Layer("training.overrides", cfg.training.overrides),
        Layer(f"{phase.value}.overrides", source.overrides),
    ]


def merge_layers(layers: list[Layer]) -> dict[str, Any]:
    """``layers`` merged (a later layer's key wins) without the keys the orchestrator manages
    (:data:`~.run_config.MANAGED_KEYS`) and the keys set to null (an override of null removes one)."""
    merged = {key: value for layer in layers for key, value in layer.values.items()}
    return {k: v for k, v in merged.items() if v is not None and k not in MANAGED_KEYS}


def stated(layers: list[Layer], key: str) -> Stated | None:
    """What ``layers`` set ``key`` to, and where (the last layer naming it); None when none does,
    or that layer sets it to null."""
    for layer in reversed(layers):
        if key in layer.values:
            value = layer.values[key]
            return None if value is None else Stated(value, layer.where(key))
    return None


def trace_keys(cfg: RunConfig) -> dict[str, Any]:
    """The trace keys written into every training YAML: ``{"abscot_m_max": generation.m_max}``."""
    return {key: getattr(cfg.generation, field) for key, field in TRACE_KEYS.items()}


def abscot_args(yaml_cfg: dict[str, Any], source: Path) -> AbsCoTArgs:
    """The abscot settings of a generated training YAML, defaults filled in (``source``: the
    phase config named in errors)."""
    try:
        return AbsCoTArgs.from_cfg(yaml_cfg)
    except ValidationError as exc:
        raise PlanError(f"{source}: {one_line(exc)}") from None


def phase_yaml(
    cfg: RunConfig,
    phase: Phase,
    base_model: str,
    data: Path,
    traces: Path | None,
    out_dir: Path,
    prepared: Path,
) -> dict[str, Any]:
    """The axolotl config of one training stage of ``phase`` (module docstring); ``traces``: the
    trace file it reads (None: round 1's random traces)."""
    source, layers = cfg.phase(phase), phase_layers(cfg, phase)
    types = [d.get("type") for d in layers[0].values.get("datasets") or [] if isinstance(d, dict)]
    if types != [phase.dataset_type]:
        raise PlanError(
            f"{source.config}: phase {phase.letter.upper()} needs one dataset of type {phase.dataset_type}, got {types}"
        )
    merged = merge_layers(layers)
    merged.update(
        base_model=base_model,
        datasets=[{"path": str(data), "ds_type": "json", "type": phase.dataset_type}],
        output_dir=str(out_dir),
        dataset_prepared_path=str(prepared),
        use_tensorboard=True,
        **trace_keys(cfg),
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


def cpu_multiprocess_fix(cfg: RunConfig, notes: list[str]) -> dict[str, Any]:
    """YAML keys every training stage needs on this machine: axolotl 0.19 maps every rank to
    accelerator LOCAL_RANK; without a GPU (:func:`gpu_present`), a ``max_memory`` of the CPU alone
    gives a CPU device map instead (needed for multi-process CPU training). Appends a plan note."""
    overrides = {**cfg.training.overrides, **cfg.phase_a.overrides, **cfg.phase_b.overrides}
    if cfg.training.launcher.num_processes == 1 or "max_memory" in overrides or gpu_present():
        return {}
    notes.append("no GPU: training YAMLs get max_memory {cpu: 64GiB} so that axolotl loads on CPU per rank")
    return {"max_memory": {"cpu": "64GiB"}}


def training_schedule(yaml_cfg: dict[str, Any], rows: int, num_processes: int, source: Path) -> Schedule:
    """The :class:`~.schedule.Schedule` of a generated training YAML (``source``: the phase config
    named in errors); a batch that is not a number of examples is a one-line PlanError."""
    try:
        return Schedule.of(yaml_cfg, rows, num_processes)
    except ValueError as exc:
        raise PlanError(f"{source}: {exc}") from None


def short_context_note(cfg: RunConfig, yaml_a: dict[str, Any]) -> str | None:
    """A plan note when the generation engine is shorter than the Phase A training rows."""
    limit, seq = cfg.generation.max_model_len, yaml_a["sequence_len"]
    if limit is None or limit >= seq:
        return None
    return (
        f"generation.max_model_len {limit} < Phase A sequence_len {seq}: on long rows, Phase A teachers see "
        "less CoT than training (counted in the trace stages' summaries)"
    )
