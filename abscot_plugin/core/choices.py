"""The named choices that configs, command lines and code share, each with its default (no torch:
the orchestrator and the vLLM environment read them too).

* :class:`Phase`: the two training phases of a round, the one name for a phase everywhere
  (dataset format, sequence layout, trace generation mode, the orchestrator's stages);
* :data:`CotKeep`: which part of an over-long CoT a Phase A row keeps;
* :data:`PhaseALayout`: one bottleneck pass (the method) or the two-pass split (an ablation);
* :data:`InitMethod`: how new embedding rows are initialised (and with which seed);
* :data:`Backend`: the generation backend of trace generation and evaluation, and the defaults of
  its engine settings.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal


class Phase(str, Enum):
    """A training phase; its value is its name on command lines and in run folders.

    >>> Phase("phase_a").dataset_type, Phase.B.format_name, Phase.B.letter, Phase.A.has_cot
    ('abscot_plugin.train.bottleneck', 'self_distill', 'b', True)
    """

    A = "phase_a"  # bottleneck SFT: [x; c; <beginabstract> z <endabstract>; y], y blind to c
    B = "phase_b"  # self-distillation: [x; <beginabstract> z <endabstract>; y], plain causal

    def __str__(self) -> str:
        return self.value

    @property
    def has_cot(self) -> bool:
        """Whether the row holds the verbal CoT c (Phase A)."""
        return self is Phase.A

    @property
    def format_name(self) -> str:
        """The dataset format's short name: ``bottleneck`` or ``self_distill`` (logs, counts)."""
        return "bottleneck" if self is Phase.A else "self_distill"

    @property
    def dataset_type(self) -> str:
        """The axolotl dataset ``type`` of the phase's training data."""
        return f"abscot_plugin.train.{self.format_name}"

    @property
    def letter(self) -> str:
        """``a`` or ``b``: the phase in stage names (``r2_a_train``)."""
        return self.value[-1]


CotKeep = Literal["end", "start", "both_ends"]
DEFAULT_COT_KEEP: CotKeep = "end"

# "split": [x; c; z] and [x; z; y] as two rows (:meth:`.sequences.SequenceBuilder.split_examples`),
# the layout a published reproduction trained; nothing of c reaches y through it. An ablation only.
PhaseALayout = Literal["one_pass", "split"]
DEFAULT_PHASE_A_LAYOUT: PhaseALayout = "one_pass"

InitMethod = Literal["random", "mean"]
DEFAULT_INIT: InitMethod = "random"  # the paper's
DEFAULT_INIT_SEED = 0

Backend = Literal["hf", "vllm"]
DEFAULT_BACKEND: Backend = "hf"
DEFAULT_HF_BATCH_SIZE = 8  # prompts per transformers ``generate`` call
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's share of GPU memory
DEFAULT_ROLLOUT_TIMEOUT_S = 1800.0  # one request to the rollout server: a large model's rollout batch, or a sync
