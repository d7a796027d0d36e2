"""Trainer of Phase A (``type: abscot_plugin.bottleneck``): turns the ``segment_ids`` column into
the bottleneck attention mask on the device. Phase B trains with axolotl's own trainer."""

from __future__ import annotations

from axolotl.core.trainers.base import AxolotlTrainer

from .args import BOTTLENECK_TYPE
from .segments import bottleneck_attention_mask


class AbsCoTTrainer(AxolotlTrainer):
    """AxolotlTrainer that keeps ``segment_ids`` and builds the bottleneck mask once per step.

    Every batch must carry ``segment_ids``: without them the answer would see the CoT (plain
    causal attention) and Phase A would silently train without its bottleneck.
    """

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "segment_ids" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["segment_ids"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        segment_ids = inputs.pop("segment_ids", None)
        if segment_ids is None:
            raise ValueError(
                f"abscot: a Phase A ({BOTTLENECK_TYPE}) batch has no 'segment_ids' (keys: {sorted(inputs)}); "
                "without them the bottleneck mask cannot be built. Every training dataset of a "
                f"Phase A run must be {BOTTLENECK_TYPE}, and its collator must keep the column."
            )
        unwrapped = self.accelerator.unwrap_model(model)
        dtype = next(unwrapped.parameters()).dtype
        inputs["attention_mask"] = bottleneck_attention_mask(unwrapped.config, segment_ids, dtype)
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
