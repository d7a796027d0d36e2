"""The training schedule of one stage: its effective batch in examples, its optimizer steps and
its warm-up, derived from the generated axolotl YAML, the rows and the number of processes the
way axolotl 0.19 and transformers derive them (checked against a real run in
tests/test_orchestrate.py). Packed batches are refused: their size in examples depends on lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """The optimizer steps and warm-up of one training stage, as axolotl 0.19 sets them from its
    YAML keys (``None``: unset) for ``rows`` training rows.

    The batch is ``micro_batch_size × gradient_accumulation_steps × world_size`` examples
    (``world_size``: data-parallel processes). Without ``max_steps`` axolotl gives the trainer
    ``max_steps = ceil(rows × num_epochs / batch)`` (``calculate_total_num_steps``) and the
    trainer stops there; with several epochs that can be fewer steps than ``num_epochs`` times
    those of one epoch, whose last accumulation step is a partial one. The warm-up is
    ``warmup_steps``, else ``int(warmup_ratio × steps)``, else 3 % (at most 100) of the steps,
    where steps are the data's capped by ``max_steps``; axolotl turns a warm-up of 1 into 2.

    >>> s = Schedule(rows=5000, micro_batch_size=1, gradient_accumulation_steps=16, world_size=2, warmup_ratio=0.05)
    >>> (s.batch, s.steps, s.warmup)
    (32, 157, 7)
    """

    rows: int
    micro_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    world_size: int = 1
    num_epochs: float = 1.0
    max_steps: int | None = None
    warmup_steps: int | None = None
    warmup_ratio: float | None = None

    @property
    def batch(self) -> int:
        """Examples per optimizer step."""
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size

    def _data_steps(self, rows: int) -> int:
        return math.ceil(rows * self.num_epochs / self.batch)

    def steps_for(self, rows: int) -> int:
        """The optimizer steps when ``rows`` rows reach training."""
        return self.max_steps or self._data_steps(rows)

    @property
    def steps(self) -> int:
        """The optimizer steps when all ``rows`` reach training."""
        return self.steps_for(self.rows)

    @property
    def warmup(self) -> int:
        """The warm-up steps."""
        total = min(self._data_steps(self.rows), self.max_steps or math.inf)
        if self.warmup_steps is not None:
            steps = self.warmup_steps
        elif self.warmup_ratio is not None:
            steps = int(self.warmup_ratio * total)
        else:
            steps = min(int(0.03 * total), 100)
        return 2 if steps == 1 else steps

    def short(self) -> str:
        """``157 steps, warm-up 7, batch 32`` (the run summary's cell)."""
        basis = " (max_steps)" if self.max_steps else ""
        return f"{self.steps} steps{basis}, warm-up {self.warmup}, batch {self.batch}"

    def describe(self) -> str:
        """The dry run's line: steps, warm-up, and where they come from."""
        basis = (
            "max_steps"
            if self.max_steps
            else (f"ceil({self.rows} rows × num_epochs {self.num_epochs:g} / batch {self.batch})")
        )
        return (
            f"{self.steps} optimizer steps, warm-up {self.warmup} ({basis}); batch {self.batch} examples = "
            f"micro-batch {self.micro_batch_size} × accumulation {self.gradient_accumulation_steps} × "
            f"{self.world_size} processes"
        )

    @classmethod
    def of(cls, yaml_cfg: dict[str, Any], rows: int, num_processes: int) -> Schedule:
        """The schedule of an axolotl config for ``rows`` rows on ``num_processes`` processes (in
        data-parallel groups of context_parallel_size × tensor_parallel_size, as axolotl divides
        them). Raises ValueError for a batch that is not a number of examples."""
        if yaml_cfg.get("sample_packing"):
            raise ValueError(
                "sample_packing is on: a packed micro-batch holds as many examples as fit in "
                "sequence_len, so the effective batch is not a number of examples and the optimizer "
                "steps and warm-up depend on the lengths; set sample_packing: false (batch = "
                "micro_batch_size × gradient_accumulation_steps × processes)"
            )
        if yaml_cfg.get("batch_size"):
            raise ValueError(
                "set micro_batch_size and gradient_accumulation_steps, not batch_size (the effective "
                "batch is derived from them and the number of processes)"
            )
        groups = int(yaml_cfg.get("context_parallel_size") or 1) * int(yaml_cfg.get("tensor_parallel_size") or 1)
        return cls(
            rows=rows,
            micro_batch_size=int(yaml_cfg.get("micro_batch_size") or 1),
            gradient_accumulation_steps=int(yaml_cfg.get("gradient_accumulation_steps") or 1),
            world_size=num_processes // groups,
            num_epochs=float(yaml_cfg.get("num_epochs") or 1.0),
            max_steps=yaml_cfg.get("max_steps") or None,
            warmup_steps=yaml_cfg.get("warmup_steps"),
            warmup_ratio=yaml_cfg.get("warmup_ratio"),
        )


# constant learning-rate schedules (transformers' names): no warm-up for "constant"; checked by
# curves.check_constant
CONSTANT_SCHEDULERS = ("constant", "constant_with_warmup")
# TRL 1.9 GRPOConfig's default group size, which axolotl keeps when trl.num_generations is unset
TRL_DEFAULT_NUM_GENERATIONS = 8


@dataclass(frozen=True)
class GRPOSchedule(Schedule):
    """The optimizer steps and warm-up of a GRPO stage (axolotl ``rl: grpo``) for ``rows`` prompts
    (a :class:`Schedule` whose batch counts completions, with GRPO's epoch and warm-up).

    Axolotl 0.19 computes no step count for GRPO; TRL 1.9 and transformers derive it from the
    dataloader. Each optimizer step trains on ``micro_batch_size × gradient_accumulation_steps ×
    world_size`` completions (``batch``); one generation batch of ``generation_batch_size``
    completions (default: ``micro_batch_size × world_size × steps_per_generation``, with
    ``steps_per_generation = gradient_accumulation_steps``) holds ``generation_batch_size //
    num_generations`` prompts, and TRL's ``RepeatSampler`` drops a last incomplete group of prompts.
    An epoch is ``rows // prompts_per_generation × num_iterations × steps_per_generation``
    micro-steps, i.e. that over ``gradient_accumulation_steps`` optimizer steps (rounded up, at
    least 1); ``max_steps`` wins. Warm-up: ``warmup_steps`` (1 becomes 2), else the ratio
    (``warmup_ratio``, default 0.03) of the steps, rounded up, as transformers 5 applies it; none
    with ``lr_scheduler: constant`` (transformers' constant schedule has no warm-up).

    >>> s = GRPOSchedule(rows=100, micro_batch_size=4, gradient_accumulation_steps=2, num_generations=4)
    >>> (s.batch, s.prompts_per_generation, s.steps, s.warmup)
    (8, 2, 50, 2)
    """

    num_generations: int = TRL_DEFAULT_NUM_GENERATIONS
    generation_batch_size: int | None = None
    num_iterations: int = 1
    lr_scheduler: str = "cosine"

    def __post_init__(self) -> None:
        if self.generation % self.num_generations:
            raise ValueError(
                f"generation_batch_size {self.generation} is not a multiple of trl.num_generations "
                f"{self.num_generations}"
            )
        if self.generation % (self.micro_batch_size * self.world_size):
            raise ValueError(
                f"trl.generation_batch_size {self.generation} is not a multiple of micro_batch_size × processes "
                f"{self.micro_batch_size * self.world_size}"
            )

    @property
    def steps_per_generation(self) -> int:
        """Micro-steps trained on one generation batch."""
        if self.generation_batch_size is None:
            return self.gradient_accumulation_steps
        return self.generation_batch_size // (self.micro_batch_size * self.world_size)

    @property
    def generation(self) -> int:
        """Completions per generation batch."""
        return self.generation_batch_size or self.micro_batch_size * self.world_size * self.gradient_accumulation_steps

    @property
    def prompts_per_generation(self) -> int:
        """Distinct prompts per generation batch (each sampled ``num_generations`` times)."""
        return self.generation // self.num_generations

    def _data_steps(self, rows: int) -> int:
        micro = rows // self.prompts_per_generation * self.num_iterations * self.steps_per_generation
        return math.ceil(self.num_epochs * max(math.ceil(micro / self.gradient_accumulation_steps), 1))

    @property
    def warmup(self) -> int:
        """The warm-up steps (none under a constant learning rate)."""
        if self.lr_scheduler == "constant":
            return 0
        if self.warmup_steps is not None:
            return 2 if self.warmup_steps == 1 else self.warmup_steps
        ratio = 0.03 if self.warmup_ratio is None else self.warmup_ratio
        return 2 if ratio == 1 else math.ceil(ratio * self.steps)

    def short(self) -> str:
        """``50 steps, warm-up 2, batch 8 (2 prompts × 4)`` (the run summary's cell)."""
        basis = " (max_steps)" if self.max_steps else ""
        prompts = self.batch // self.num_generations
        return (
            f"{self.steps} steps{basis}, warm-up {self.warmup}, batch {self.batch} "
            f"({prompts} prompt{'s' if prompts != 1 else ''} × {self.num_generations})"
        )

    def describe(self) -> str:
        """The dry run's line: steps, warm-up, and where they come from."""
        basis = (
            "max_steps"
            if self.max_steps
            else (
                f"{self.rows} prompts // {self.prompts_per_generation} per generation batch × num_iterations "
                f"{self.num_iterations} × {self.steps_per_generation} micro-steps / accumulation "
                f"{self.gradient_accumulation_steps} × num_epochs {self.num_epochs:g}"
            )
        )
        return (
            f"{self.steps} optimizer steps, warm-up {self.warmup} ({basis}); batch {self.batch} completions = "
            f"micro-batch {self.micro_batch_size} × accumulation {self.gradient_accumulation_steps} × "
            f"{self.world_size} processes; {self.num_generations} completions per prompt"
        )

    @classmethod
    def of(cls, yaml_cfg: dict[str, Any], rows: int, num_processes: int) -> GRPOSchedule:
        """The schedule of an axolotl ``rl: grpo`` config for ``rows`` prompts on ``num_processes``
        training processes (a vLLM server is not one); ValueError for a batch TRL would refuse."""
        trl = yaml_cfg.get("trl") or {}
        groups = int(yaml_cfg.get("context_parallel_size") or 1) * int(yaml_cfg.get("tensor_parallel_size") or 1)
        return cls(
            rows=rows,
            micro_batch_size=int(yaml_cfg.get("micro_batch_size") or 1),
            gradient_accumulation_steps=int(yaml_cfg.get("gradient_accumulation_steps") or 1),
            world_size=num_processes // groups,
            num_generations=int(trl.get("num_generations") or TRL_DEFAULT_NUM_GENERATIONS),
            generation_batch_size=trl.get("generation_batch_size"),
            num_iterations=int(trl.get("num_iterations") or 1),
            num_epochs=float(yaml_cfg.get("num_epochs") or 1.0),
            max_steps=yaml_cfg.get("max_steps") or None,
            warmup_steps=yaml_cfg.get("warmup_steps"),
            warmup_ratio=yaml_cfg.get("warmup_ratio"),
            lr_scheduler=str(yaml_cfg.get("lr_scheduler") or "cosine"),
        )
