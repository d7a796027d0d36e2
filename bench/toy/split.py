"""Ablation only (docs/toy_study.md): Phase A split into two passes, as a published reproduction
trained it, instead of abscot's one pass under the bottleneck mask.

    pass 1  [x; c; <beginabstract> z <endabstract>]   causal, loss on z and <endabstract>
    pass 2  [x; <beginabstract> z <endabstract>; y]   causal, loss on y

In pass 2 the hidden states at z are computed without c, so nothing of c can reach y: the answer
learns from x and the trace symbols alone. abscot never trains this way; the study lists this
plugin first in a Phase A YAML (``plugins: [bench.toy.split.SplitPhaseAPlugin,
abscot_plugin.AbsCoTPlugin]``) so that axolotl takes its trainer, while abscot's plugin still
extends the tokenizer, builds the ``segment_ids`` rows and pads them.
"""

from __future__ import annotations

import torch
from axolotl.core.trainers.base import AxolotlTrainer
from axolotl.integrations.base import BasePlugin

from abscot_plugin import segments as seg
from abscot_plugin.sequences import IGNORE


def split_batch(
    input_ids: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor, pad_id: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The two passes of a Phase A batch (``segment_ids`` padded with ``segments.PAD``).

    Pass 1 keeps the row and its labels on abstract positions only; pass 2 drops the CoT tokens
    (rows re-padded on the right) and keeps the labels on answer positions only. Example, one row
    with segments ``x x c c z z z y y`` (z = begin, symbol, end): pass 1 is the 9 tokens with
    labels on the symbol and end; pass 2 is ``x x z z z y y`` with labels on the two y tokens.
    """
    segment_ids = segment_ids.long()
    real = segment_ids != seg.PAD
    first = {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "labels": labels.masked_fill(segment_ids != seg.ABSTRACT, IGNORE),
    }
    keep = real & (segment_ids != seg.COT)
    width = int(keep.sum(1).max())
    ids2 = torch.full((len(input_ids), width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    labels2 = torch.full_like(ids2, IGNORE)
    mask2 = torch.zeros_like(ids2)
    answer_labels = labels.masked_fill(segment_ids != seg.ANSWER, IGNORE)
    for row in range(len(input_ids)):
        n = int(keep[row].sum())
        ids2[row, :n] = input_ids[row][keep[row]]
        labels2[row, :n] = answer_labels[row][keep[row]]
        mask2[row, :n] = 1
    return first, {"input_ids": ids2, "attention_mask": mask2, "labels": labels2}


def _label_count(labels: torch.Tensor) -> torch.Tensor:
    """Tokens with a loss (the model shifts labels left by one)."""
    return (labels[:, 1:] != IGNORE).sum()


class SplitPhaseATrainer(AxolotlTrainer):
    """Phase A as two causal passes (:func:`split_batch`); the loss is their summed token cross
    entropy over the batch's label tokens, the normalisation of the one-pass loss."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "segment_ids" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["segment_ids"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        segment_ids = inputs.pop("segment_ids", None)
        if segment_ids is None:
            raise ValueError("split Phase A: the batch has no 'segment_ids' (is the dataset abscot_plugin.bottleneck?)")
        pad_id = self.processing_class.pad_token_id
        passes = split_batch(inputs["input_ids"], inputs["labels"], segment_ids, pad_id)
        total = sum(_label_count(p["labels"]) for p in passes)
        norm = num_items_in_batch if num_items_in_batch is not None else total
        loss, outputs = 0.0, None
        for batch in passes:
            outputs = model(**batch)
            loss = loss + outputs.loss * _label_count(batch["labels"])
        loss = loss / norm
        return (loss, outputs) if return_outputs else loss


class SplitPhaseAPlugin(BasePlugin):
    """Hands axolotl :class:`SplitPhaseATrainer`; list it before abscot's plugin, in Phase A only."""

    def get_trainer_cls(self, cfg):
        return SplitPhaseATrainer
