"""Config keys of the abscot plugin (merged into axolotl's config schema), and the checks that
need the rest of the config.

No torch and no axolotl: the orchestrator reads these defaults too (:meth:`AbsCoTArgs.from_cfg`).
Each default is read from the module that owns the concept (:mod:`.symbols`, :mod:`.traces`,
:mod:`.choices`, :mod:`.rows`), never restated here. :class:`RowLayout` is the Phase A row layout
that ``sequence_len``, ``abscot_m_max`` and ``abscot_cot_keep`` describe, read by the dataset
formats, trace generation and the toy study alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, Field, model_validator

from . import moved_name
from .core.choices import (
    DEFAULT_COT_KEEP,
    DEFAULT_INIT,
    DEFAULT_INIT_SEED,
    DEFAULT_PHASE_A_LAYOUT,
    DEFAULT_ROLLOUT_TIMEOUT_S,
    CotKeep,
    InitMethod,
    Phase,
    PhaseALayout,
)
from .core.rows import DEFAULT_ID_FIELD
from .core.symbols import DEFAULT_NUM_SYMBOLS, MAX_NUM_SYMBOLS
from .core.traces import TraceSettings

if TYPE_CHECKING:
    import argparse

BOTTLENECK_TYPE = Phase.A.dataset_type  # the format whose rows need the mask (and its checks)
# what the plugin's get_input_args names: how axolotl finds this model, and how the dataset
# strategies recognise the active plugin without importing it
INPUT_ARGS = f"{__name__}.AbsCoTArgs"
# attention backends that cannot take the bottleneck mask (they only do causal/varlen masks)
_MASKLESS_ATTN = ("flash_attention_2", "flash_attention_3", "flash", "sage", "xformers", "fp8")
_MASKLESS_FLAGS = ("flash_attention", "sage_attention", "xformers_attention")
# the RL stage (rl: grpo): the trainer and rollout a GRPO config must name, and its dataset type
GRPO_TRAINER = "abscot_plugin.train.grpo_trainer.AbsCoTGRPOTrainer"
GRPO_ROLLOUT = "abscot_plugin.rl.rollout.rollout_func"
RL_DATASET_TYPE = "abscot_plugin.rl_prompts"
# sampling keys the rollout does not apply (it samples softmax(logits / temperature) in full, the
# distribution the trainer's log-probs assume), with the values that mean "off"
_GRPO_SAMPLING_OFF = {
    "top_p": (None, 1.0),
    "top_k": (None, 0, -1),
    "min_p": (None, 0.0),
    "repetition_penalty": (None, 1.0),
}


class AbsCoTArgs(BaseModel):
    """Abstract-CoT settings; each key is read by the plugin, the dataset strategies or both."""

    abscot_num_symbols: int = Field(
        default=DEFAULT_NUM_SYMBOLS,
        ge=1,
        le=MAX_NUM_SYMBOLS,
        description="M, the size of the abstract vocabulary V_abs",
    )
    abscot_m_max: int = Field(default=TraceSettings.m_max, ge=1, description="longest abstract trace")
    abscot_init: InitMethod = Field(
        default=DEFAULT_INIT,
        description="initialisation of newly added embedding rows",
    )
    abscot_init_seed: int = DEFAULT_INIT_SEED
    abscot_lora_embeddings: Literal["new_rows", "full"] = Field(
        default="new_rows",
        description="under LoRA: train only the V_abs rows (peft trainable tokens) or the whole "
        "embedding and lm_head (modules_to_save, tie kept)",
    )
    abscot_trace_file: str | None = Field(
        default=None,
        description="a trace file (abscot_plugin.core.traces), matched to rows by name: the id field, else a "
        "hash of the messages. Unset: Phase A uses round-1 random traces and Phase B reads each "
        "row's 'abstract_trace' field",
    )
    abscot_trace_seed: int = Field(default=0, description="seed of round-1 random traces")
    abscot_cot_keep: CotKeep = Field(
        default=DEFAULT_COT_KEEP,
        description="which part of an over-long CoT Phase A keeps (the rest is cut to fit "
        "sequence_len; the trace and answer are never cut)",
    )
    abscot_phase_a_layout: PhaseALayout = Field(
        default=DEFAULT_PHASE_A_LAYOUT,
        description="one_pass: the bottleneck, one row, y blind to c but not to z's hidden states (the "
        "method); split: [x; c; z] and [x; z; y] as two rows, so nothing of c reaches y (an ablation, "
        "docs/toy_study.md; never for a real run)",
    )
    abscot_skip_bad_rows: bool = Field(
        default=False,
        description="skip (and count) malformed rows instead of failing",
    )
    abscot_id_field: str = DEFAULT_ID_FIELD
    abscot_rl_m_min: int = Field(
        default=TraceSettings.m_min,
        ge=1,
        description="RL (rl: grpo): fewest trace symbols a rollout samples (<endabstract> forbidden "
        "before); the most is abscot_m_max",
    )
    abscot_rollout_server: str | None = Field(
        default=None,
        description="RL: URL of an abscot rollout server (python -m abscot_plugin.rl.rollout_server, in the vLLM "
        "environment) that samples the rollouts, its weights synced from the policy each step; unset: "
        "transformers in the training process",
    )
    abscot_rollout_timeout_s: float = Field(
        default=DEFAULT_ROLLOUT_TIMEOUT_S,
        gt=0,
        description="RL: seconds one request to the rollout server (a batch of rollouts, a weight sync) may take",
    )

    @classmethod
    def from_cfg(cls, cfg: Any) -> AbsCoTArgs:
        """The abscot settings of a config (a dict or axolotl's ``DictDefault``), unset or null
        keys at their defaults; raises pydantic's ValidationError for an unknown key or value."""
        return cls.model_validate({k: v for k, v in cfg.items() if k.startswith("abscot_") and v is not None})

    @model_validator(mode="before")
    @classmethod
    def _check_keys_and_backend(cls, data):
        if not isinstance(data, dict):
            return data
        unknown = sorted(k for k in data if k.startswith("abscot_") and k not in cls.model_fields)
        if unknown:
            raise ValueError(f"unknown abscot key(s) {unknown}; known: {sorted(cls.model_fields)}")
        check_moved_names(data)
        if is_grpo(data):
            check_grpo(data)
        if not uses_bottleneck(data):
            return data
        if data.get("sample_packing"):
            raise ValueError(f"{BOTTLENECK_TYPE} needs sample_packing: false (packing drops the bottleneck mask)")
        attn = str(data.get("attn_implementation") or "")
        if any(attn.startswith(name) for name in _MASKLESS_ATTN) or any(data.get(flag) for flag in _MASKLESS_FLAGS):
            raise ValueError(
                f"{BOTTLENECK_TYPE} needs a backend that takes a custom mask: "
                f"attn_implementation flex_attention, sdpa or eager (got {attn or 'a flash flag'})"
            )
        return data


@dataclass(frozen=True)
class RowLayout:
    """How a training row fits ``sequence_len``: Phase A rows reserve room for an ``m_max``-symbol
    trace (+ 2 delimiters) and cut only their CoT, keeping its ``cot_keep`` part; Phase B rows (no
    CoT) must fit whole, their traces at most ``m_max`` symbols
    (:class:`~abscot_plugin.tokens.sequences.SequenceBuilder`). The one carrier of the three:
    training reads it from the config (:meth:`from_cfg`), trace generation from its command line
    (:meth:`from_generate_args`), so a teacher's prefix is the training row's.

    >>> RowLayout(sequence_len=8192, m_max=128, cot_keep="end")
    RowLayout(sequence_len=8192, m_max=128, cot_keep='end')
    """

    sequence_len: int
    m_max: int
    cot_keep: CotKeep

    def __post_init__(self) -> None:
        if self.sequence_len < 1 or self.m_max < 1:
            raise ValueError(f"row layout needs sequence_len >= 1 and m_max >= 1 (got {self})")
        if self.cot_keep not in get_args(CotKeep):
            raise ValueError(f"row layout: cot_keep {self.cot_keep!r} is not one of {list(get_args(CotKeep))}")

    @classmethod
    def from_cfg(cls, cfg: Any) -> RowLayout:
        """The layout of an axolotl config (a dict or ``DictDefault``): its ``sequence_len``,
        ``abscot_m_max`` and ``abscot_cot_keep`` (unset abscot keys at their defaults)."""
        if not cfg.get("sequence_len"):
            raise ValueError("sequence_len is unset: abscot rows are laid out to fit it")
        args = AbsCoTArgs.from_cfg(cfg)
        return cls(int(cfg["sequence_len"]), args.abscot_m_max, args.abscot_cot_keep)

    @classmethod
    def from_generate_args(cls, args: argparse.Namespace, model_len: int | None) -> RowLayout:
        """The Phase A training layout of the generate CLI: ``--sequence-len`` (default
        ``model_len``, the engine's length), ``--m-max``, ``--cot-keep``."""
        sequence_len = args.sequence_len or model_len
        if sequence_len is None:
            raise ValueError("--mode phase_a needs --sequence-len (the model config has no length)")
        return cls(sequence_len, args.m_max, args.cot_keep)


def dataset_types(cfg) -> list[str]:
    """The ``type`` of each training dataset (entries may be dicts or axolotl's pydantic models)."""
    types = []
    for entry in cfg.get("datasets") or []:
        value = entry.get("type") if isinstance(entry, dict) else getattr(entry, "type", None)
        types.append(str(value or ""))
    return types


def check_moved_names(cfg) -> None:
    """ValueError naming the new spelling of each flat-layout name (:data:`abscot_plugin.MOVED`) in a
    config's dataset types, ``trainer_cls``, ``trl.rollout_func`` and ``trl.reward_funcs``: axolotl
    would otherwise skip such a dataset type silently."""
    trl = cfg.get("trl") or {}
    trl = trl if isinstance(trl, dict) else trl.model_dump()
    named = [*dataset_types(cfg), cfg.get("trainer_cls"), trl.get("rollout_func"), *(trl.get("reward_funcs") or [])]
    stale = {value: moved_name(value) for value in named if value and moved_name(value)}
    if stale:
        raise ValueError("abscot modules moved: " + "; ".join(f"{old} is now {new}" for old, new in stale.items()))


def uses_bottleneck(cfg) -> bool:
    """True when any training dataset uses the Phase A bottleneck format."""
    return BOTTLENECK_TYPE in dataset_types(cfg)


def is_grpo(cfg) -> bool:
    """True for a GRPO config (``rl: grpo``; a string or axolotl's ``RLType``)."""
    rl = cfg.get("rl")
    return getattr(rl, "value", rl) == "grpo"


def zero_stage(deepspeed: Any) -> int | None:
    """The ZeRO stage of a config's ``deepspeed`` value (a dict or a JSON file path; None when
    unset or unreadable: axolotl reports a missing file itself)."""
    if isinstance(deepspeed, (str, Path)):
        try:
            deepspeed = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    if not isinstance(deepspeed, dict):
        return None
    return (deepspeed.get("zero_optimization") or {}).get("stage")


def check_grpo(cfg) -> None:
    """The keys a GRPO config of the RL stage needs (docs/method.md, "RL stage"); ValueError naming
    the key otherwise."""
    trl = cfg.get("trl") or {}
    trl = trl if isinstance(trl, dict) else trl.model_dump()
    if cfg.get("trainer_cls") != GRPO_TRAINER:
        raise ValueError(f"rl: grpo needs trainer_cls: {GRPO_TRAINER} (got {cfg.get('trainer_cls')!r})")
    if trl.get("rollout_func") != GRPO_ROLLOUT:
        raise ValueError(f"rl: grpo needs trl.rollout_func: {GRPO_ROLLOUT} (got {trl.get('rollout_func')!r})")
    if trl.get("use_vllm"):
        raise ValueError(
            "trl.use_vllm: the abscot rollout does not use TRL's vLLM modes (they cannot apply the trace "
            "constraint); for vLLM rollouts set abscot_rollout_server to an abscot rollout server's URL"
        )
    server = cfg.get("abscot_rollout_server")
    if server is not None and not str(server).startswith(("http://", "https://")):
        raise ValueError(f"abscot_rollout_server {server!r}: needs an http:// URL, e.g. http://127.0.0.1:8765")
    if server is not None and (cfg.get("fsdp") or cfg.get("fsdp_config")):
        raise ValueError(
            "abscot_rollout_server: the weight sync does not support FSDP-sharded parameters yet; train with "
            "DDP or DeepSpeed, or leave abscot_rollout_server unset"
        )
    if server is not None and cfg.get("adapter") and zero_stage(cfg.get("deepspeed")) == 3:
        raise ValueError(
            "abscot_rollout_server: the weight sync does not merge LoRA under DeepSpeed ZeRO-3 yet; train LoRA "
            "with DDP or ZeRO-1/2 (full fine-tuning under ZeRO-3 is supported), or leave abscot_rollout_server unset"
        )
    for key, off in _GRPO_SAMPLING_OFF.items():
        if trl.get(key) not in off:
            raise ValueError(
                f"trl.{key}={trl.get(key)!r}: the abscot rollout samples the full softmax at trl.temperature "
                f"(the trainer's log-probabilities assume it); leave trl.{key} unset"
            )
    types = [t for t in dataset_types(cfg) if t != RL_DATASET_TYPE]
    if types:
        raise ValueError(f"rl: grpo datasets need type: {RL_DATASET_TYPE} (got {types})")
    m_min = cfg.get("abscot_rl_m_min") or TraceSettings.m_min
    m_max = cfg.get("abscot_m_max") or TraceSettings.m_max
    if m_min > m_max:
        raise ValueError(f"abscot_rl_m_min {m_min} > abscot_m_max {m_max}")
