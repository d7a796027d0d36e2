"""The orchestrator's run config: one YAML file, validated by pydantic.

Relative paths are resolved against the current directory (run ``orchestrate.py`` from the
repository root, like ``axolotl train``). Every validation problem is reported as one line
naming the file and the key (:class:`ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.choices import DEFAULT_BACKEND, DEFAULT_HF_BATCH_SIZE, Backend, Phase
from ..core.rows import DEFAULT_ID_FIELD
from ..core.traces import TraceSettings
from ..eval.eval_cli import DEFAULT_EVAL_BATCH_SIZE
from ..rl.judge import load_settings

# axolotl keys the orchestrator sets per stage; a run config may not override them
MANAGED_KEYS = (
    "base_model",
    "base_model_config",
    "tokenizer_config",
    "datasets",
    "output_dir",
    "dataset_prepared_path",
    "abscot_trace_file",
    "use_tensorboard",
)


class ConfigError(ValueError):
    """A run config that cannot be used; the message is one line."""


class PlanError(ValueError):
    """A run config that validates but cannot be planned (one-line message)."""


def _existing(path: Path | None, what: str) -> Path | None:
    if path is None:
        return None
    resolved = Path(path).expanduser().absolute()  # not resolve(): a venv's python is a symlink
    if not resolved.exists():
        raise ValueError(f"{what} not found: {path}")
    return resolved


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Dolci-Think rows and the per-round data schedule."""

    path: Path = Field(description="JSONL of Dolci-Think rows (id, messages)")
    num_rows: int = Field(ge=1, description="N: rows per phase")
    schedule: Literal["same", "per_round", "per_phase"] = Field(
        default="same",
        description="same: the first N rows in every phase; per_round: a fresh disjoint slice of N "
        "rows per round (both phases share it); per_phase: a fresh slice per round and phase",
    )
    id_field: str = DEFAULT_ID_FIELD

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: Path) -> Path:
        return _existing(v, "data file")


class PhaseConfig(_Strict):
    """An axolotl YAML to start a phase from, and overrides for this run."""

    config: Path
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("config")
    @classmethod
    def _config_exists(cls, v: Path) -> Path:
        return _existing(v, "phase config")


class LauncherConfig(_Strict):
    """``accelerate launch`` settings for the training stages."""

    num_processes: int = Field(default=1, ge=1, description="processes over all machines")
    num_machines: int = Field(default=1, ge=1)
    machine_rank: int = Field(default=0, ge=0)
    main_process_ip: str | None = None
    main_process_port: int | None = None
    config_file: Path | None = Field(default=None, description="an accelerate config (DeepSpeed, FSDP, …)")
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("config_file")
    @classmethod
    def _config_file_exists(cls, v: Path | None) -> Path | None:
        return _existing(v, "accelerate config_file")

    @model_validator(mode="after")
    def _machines(self) -> LauncherConfig:
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be < num_machines {self.num_machines}")
        if self.num_processes % self.num_machines:
            raise ValueError("num_processes must be a multiple of num_machines")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("num_machines > 1 needs main_process_ip (the rank-0 machine's address)")
        return self


class TrainingConfig(_Strict):
    """Overrides for both phases' YAMLs (phase overrides win) and the launcher."""

    overrides: dict[str, Any] = Field(default_factory=dict)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)


class GenerationConfig(_Strict):
    """Teacher trace generation (``python -m abscot_plugin.generation.generate``)."""

    backend: Backend = DEFAULT_BACKEND
    python: Path | None = Field(
        default=None,
        description="interpreter for the generation stages (default: this one for hf, .venv-vllm/bin/python for vllm)",
    )
    # stage-1 sampling (traces.TraceSettings: its defaults, and its checks in _trace_settings)
    m_min: int = TraceSettings.m_min
    m_max: int = TraceSettings.m_max
    temperature: float = TraceSettings.temperature
    top_p: float = TraceSettings.top_p
    seed: int = TraceSettings.seed
    max_model_len: int | None = Field(default=None, ge=16)
    batch_size: int = Field(default=DEFAULT_HF_BATCH_SIZE, ge=1, description="hf backend")
    tensor_parallel_size: int = Field(default=1, ge=1, description="vllm backend: GPUs per engine")
    data_parallel_size: int = Field(
        default=1, ge=1, description="engines (worker processes) per node, each with its own GPUs and rows"
    )
    num_nodes: int = Field(
        default=1,
        ge=1,
        description="machines generating traces: machine ranks 0 .. num_nodes-1 of training.launcher, "
        "on a shared filesystem",
    )
    dtype: str = "auto"
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="extra environment (e.g. VLLM_CPU_KVCACHE_SPACE)")

    @field_validator("python")
    @classmethod
    def _python_exists(cls, v: Path | None) -> Path | None:
        return _existing(v, "generation python")

    @model_validator(mode="after")
    def _trace_settings(self) -> GenerationConfig:
        self.trace_settings()
        return self

    def trace_settings(self) -> TraceSettings:
        """The stage-1 settings of the trace stages (raises ValueError for impossible ones)."""
        return TraceSettings(self.m_min, self.m_max, self.temperature, self.seed, self.top_p)


class MergeConfig(_Strict):
    dtype: str = "auto"


class EvaluationConfig(_Strict):
    """The final evaluation: lm-eval tasks of ``eval_tasks/`` run through ``abscot_plugin.eval.eval_cli``
    on the warm-up model (``tasks``) and on the base model (``baseline_tasks``), then a report
    (``OUT/eval/report.md``). No tasks: no evaluation."""

    tasks: list[str] = Field(default_factory=list, description="on B_T, e.g. [math500_abscot]")
    baseline_tasks: list[str] = Field(default_factory=list, description="on base_model, e.g. [math500_verbal]")
    backend: Backend | None = Field(default=None, description="default: generation.backend")
    model_args: dict[str, Any] = Field(default_factory=dict, description="e.g. dtype, tensor_parallel_size")
    gen_kwargs: dict[str, Any] = Field(default_factory=dict, description="e.g. max_gen_toks, m_max, trace_seed")
    data_files: dict[str, Path] = Field(
        default_factory=dict, description="local datasets (math500_file, gsm8k_file) instead of the hub's"
    )
    limit: int | None = Field(default=None, ge=1, description="only the first N problems per task")
    batch_size: int = Field(default=DEFAULT_EVAL_BATCH_SIZE, ge=1)
    extra_args: list[str] = Field(default_factory=list, description="further lm_eval flags")

    @field_validator("data_files")
    @classmethod
    def _data_files_exist(cls, v: dict[str, Path]) -> dict[str, Path]:
        known = {"math500_file", "gsm8k_file"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown data_files keys {unknown} (use {sorted(known)})")
        return {key: _existing(path, f"evaluation data file {key}") for key, path in v.items()}


class RLConfig(_Strict):
    """The optional RL stage after the warm-up (README, "RL stage (GRPO)"): GRPO through ``axolotl
    train`` on a per-run copy of ``config`` (an axolotl ``rl: grpo`` YAML) starting from B_T, then
    the LoRA merge (when ``config`` trains an adapter), then ``tasks`` evaluated on the RL model.
    ``training.overrides`` (meant for the warm-up phases) do not apply here: ``overrides`` do."""

    config: Path = Field(description="GRPO axolotl YAML, e.g. axolotl_configs/tiny_grpo.yml")
    data: Path = Field(description="JSONL of RL prompts: problem/answer (MATH) or question/answer (GSM8K)")
    num_rows: int | None = Field(default=None, ge=1, description="only the first N prompts (default: all)")
    overrides: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] | None = Field(default=None, description="on the RL model (default: evaluation.tasks)")
    judge: Path | None = Field(
        default=None, description="LLM-judge settings (abscot_plugin.rl.judge.JudgeSettings YAML) for the judge reward"
    )

    @field_validator("config")
    @classmethod
    def _config_exists(cls, v: Path) -> Path:
        return _existing(v, "RL config")

    @field_validator("data")
    @classmethod
    def _data_exists(cls, v: Path) -> Path:
        return _existing(v, "RL data file")

    @field_validator("judge")
    @classmethod
    def _judge_settings(cls, v: Path | None) -> Path | None:
        path = _existing(v, "judge settings")
        if path is not None:
            load_settings(path)  # ValueError naming the file and the key
        return path


class RunConfig(_Strict):
    """One T-round warm-up run, optionally followed by an RL stage (``rl``)."""

    output_dir: Path
    base_model: str = Field(description="local folder or hub id of the model to start from")
    rounds: int = Field(ge=1, description="T, the number of policy-iteration rounds")
    data: DataConfig
    phase_a: PhaseConfig
    phase_b: PhaseConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    rl: RLConfig | None = Field(default=None, description="an RL stage after the warm-up (none: no RL)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for every stage")

    @field_validator("output_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return Path(v).expanduser().absolute()

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, v: str) -> str:
        local = Path(v).expanduser()
        if local.exists():
            return str(local.absolute())
        if v.startswith(("/", ".", "~")) or Path(v.split("/")[0]).is_dir():
            raise ValueError(f"base model folder not found: {v}")
        return v  # a hub id

    def phase(self, phase: Phase) -> PhaseConfig:
        """The ``phase_a`` or ``phase_b`` section."""
        return self.phase_a if phase is Phase.A else self.phase_b

    @property
    def rl_tasks(self) -> list[str]:
        """The lm-eval tasks of the RL model: ``rl.tasks``, else ``evaluation.tasks`` (no RL: none)."""
        if self.rl is None:
            return []
        return self.evaluation.tasks if self.rl.tasks is None else self.rl.tasks

    @property
    def eval_backend(self) -> Backend:
        """The evaluation stages' backend: ``evaluation.backend``, else ``generation.backend``."""
        return self.evaluation.backend or self.generation.backend

    @model_validator(mode="after")
    def _no_managed_overrides(self) -> RunConfig:
        for where, overrides in (
            ("training.overrides", self.training.overrides),
            ("phase_a.overrides", self.phase_a.overrides),
            ("phase_b.overrides", self.phase_b.overrides),
            ("rl.overrides", self.rl.overrides if self.rl else {}),
        ):
            managed = sorted(set(overrides) & set(MANAGED_KEYS))
            if managed:
                raise ValueError(f"{where} sets {managed}, which the orchestrator sets per stage")
        if self.generation.num_nodes > self.training.launcher.num_machines:
            raise ValueError(
                f"generation.num_nodes {self.generation.num_nodes} exceeds training.launcher.num_machines "
                f"{self.training.launcher.num_machines} (the machines and their ranks)"
            )
        return self


def one_line(exc: ValidationError) -> str:
    """A pydantic validation error as one line: ``key.path: problem; …``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run config; raises :class:`ConfigError` with a one-line message."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read run config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config must be a YAML mapping")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {one_line(exc)}") from None
