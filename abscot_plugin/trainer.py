"""Trainer that turns the ``segment_ids`` column into the bottleneck attention mask on device."""

from __future__ import annotations

import torch
from axolotl.core.trainers.base import AxolotlTrainer

from .segments import block_mask, dense_mask


def bottleneck_attention_mask(config, segment_ids: torch.Tensor, dtype: torch.dtype):
    """The mask for the model's attention backend: a BlockMask for flex, bool for SDPA,
    additive float for eager."""
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    seg = segment_ids.long()
    if impl == "flex_attention":
        return block_mask(seg)
    if impl == "sdpa":
        return dense_mask(seg)
    if impl == "eager":
        return dense_mask(seg, dtype)
    raise ValueError(
        f"the bottleneck mask needs attn_implementation flex_attention, sdpa or eager, not {impl!r}"
    )


class AbsCoTTrainer(AxolotlTrainer):
    """AxolotlTrainer that keeps ``segment_ids`` and builds the bottleneck mask once per step."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "segment_ids" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["segment_ids"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        segment_ids = inputs.pop("segment_ids", None)
        if segment_ids is not None:
            unwrapped = self.accelerator.unwrap_model(model)
            dtype = next(unwrapped.parameters()).dtype
            inputs["attention_mask"] = bottleneck_attention_mask(unwrapped.config, segment_ids, dtype)
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
