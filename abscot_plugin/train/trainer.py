"""Trainer of both phases: loss-only logits always, the bottleneck mask for Phase A.

* Every training step projects hidden states onto the vocabulary only where the loss reads them
  (:mod:`abscot_plugin.train.loss_logits`), instead of fp32 logits at all 8,192 positions.
* Phase A (``type: abscot_plugin.train.bottleneck``): the ``segment_ids`` column becomes the bottleneck
  attention mask on the device, once per step (:mod:`abscot_plugin.tokens.segments`).
"""

from __future__ import annotations

from axolotl.core.trainers.base import AxolotlTrainer

from ..args import BOTTLENECK_TYPE, uses_bottleneck
from ..tokens.segments import bottleneck_attention_mask
from .loss_logits import loss_only_inputs


class AbsCoTTrainer(AxolotlTrainer):
    """AxolotlTrainer with loss-only logits and, for Phase A data, the bottleneck mask.

    Phase A is read from the run's config, which axolotl's trainer builder sets as
    ``axolotl_cfg`` right after building the trainer. Until then (or without a config) the trainer
    takes the data for Phase A. In Phase A every batch must carry ``segment_ids``: without them
    the answer would see the CoT (plain causal attention) and Phase A would silently train
    without its bottleneck.
    """

    axolotl_cfg = None  # axolotl's builder sets the run's config on trainers with this attribute

    @property
    def bottleneck(self) -> bool:
        """Whether batches are Phase A (bottleneck) data: True unless the config says otherwise."""
        return self.axolotl_cfg is None or uses_bottleneck(self.axolotl_cfg)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "segment_ids" not in self._signature_columns:
            self._signature_columns = list(self._signature_columns) + ["segment_ids"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.bottleneck:
            inputs["attention_mask"] = self._bottleneck_mask(model, inputs)
        # evaluation asks for the outputs (return_outputs) and gets every position's logits
        if not return_outputs and self._loss_reads_labels_only(inputs):
            inputs.update(loss_only_inputs(inputs["labels"], inputs.get("shift_labels")))
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _bottleneck_mask(self, model, inputs):
        """The mask of the batch's ``segment_ids`` (popped), for the model's attention backend."""
        segment_ids = inputs.pop("segment_ids", None)
        if segment_ids is None:
            raise ValueError(
                f"abscot: a Phase A ({BOTTLENECK_TYPE}) batch has no 'segment_ids' (keys: {sorted(inputs)}); "
                "without them the bottleneck mask cannot be built. Every training dataset of a "
                f"Phase A run must be {BOTTLENECK_TYPE}, and its collator must keep the column."
            )
        unwrapped = self.accelerator.unwrap_model(model)
        dtype = next(unwrapped.parameters()).dtype
        return bottleneck_attention_mask(unwrapped.config, segment_ids, dtype)

    def _loss_reads_labels_only(self, inputs) -> bool:
        """True when the model's own loss from ``labels`` is the step's loss: no label smoother,
        custom loss function (``compute_loss_func``) or ORPO reads the logits."""
        return (
            "labels" in inputs
            and self.label_smoother is None
            and self.compute_loss_func is None
            and not self.args.orpo_alpha
        )
