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
        basis = "max_steps" if self.max_steps else (
            f"ceil({self.rows} rows × num_epochs {self.num_epochs:g} / batch {self.batch})")
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
