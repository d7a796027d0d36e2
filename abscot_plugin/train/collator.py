"""Collator for Phase A batches: pads ``segment_ids`` alongside axolotl's usual padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from axolotl.utils.collators import DataCollatorForSeq2Seq

from ..tokens.segments import PAD


@dataclass
class SegmentCollator(DataCollatorForSeq2Seq):
    """axolotl's seq2seq collator, plus ``segment_ids`` padded with ``PAD`` on the same side."""

    def __call__(self, features, return_tensors=None):
        segments = [f.pop("segment_ids") for f in features] if "segment_ids" in features[0] else None
        batch = super().__call__(features, return_tensors=return_tensors)
        if segments is not None:
            width = batch["input_ids"].shape[1]
            left = self.tokenizer.padding_side == "left"
            padded = [
                ([PAD] * (width - len(s)) + list(s)) if left else (list(s) + [PAD] * (width - len(s))) for s in segments
            ]
            batch["segment_ids"] = torch.tensor(padded, dtype=torch.int8)
        return batch
