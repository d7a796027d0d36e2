"""Loss-only logits: the vocabulary projection only at the positions the loss reads.

A causal LM's loss at position t scores the label of token t + 1. Phase A labels only z,
``<endabstract>`` and y (a few hundred of 8,192 positions), Phase B only z and y, yet a plain
forward computes fp32 logits at every position: 8,192 × 151,936 × 4 bytes ≈ 5 GB per sequence for
Qwen3, as much again for their gradient, and ~10 % of the model's FLOPs in the lm_head matmul.

:func:`loss_only_inputs` gives the two keyword arguments that make a transformers causal LM
project only those positions and still compute its own loss there:

* ``logits_to_keep``: a 1-D tensor of sequence indices (the model slices its hidden states with it
  before ``lm_head``): the union over the batch of the positions t whose label t + 1 is set;
* ``shift_labels``: the already shifted labels at those positions, ``B × K``, which the model's
  loss function (``ForCausalLMLoss``) takes instead of shifting ``labels`` itself.

The loss is the same sum over the same (position, label) pairs, divided by the same count
(``num_items_in_batch`` when the trainer passes it, else the number of labelled positions), so the
loss and every gradient equal the full-logits ones up to float summation order; a position kept
for another row of the batch carries the ignore index and adds nothing. With micro-batch 1 the
kept positions are exactly the labelled ones. Pure torch (no axolotl), for the benchmarks.

Example, two right-padded rows (``-100`` = no label)::

    labels        = [[-100, -100,    5,    6],
                     [-100,    7, -100, -100]]
    shifted       = [[-100,    5,    6, -100],     # label of token t + 1, at t
                     [   7, -100, -100, -100]]
    logits_to_keep = [0, 1, 2]
    shift_labels   = [[-100, 5, 6], [7, -100, -100]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tokens.sequences import IGNORE


def loss_only_inputs(
    labels: torch.Tensor, shift_labels: torch.Tensor | None = None, ignore_index: int = IGNORE
) -> dict[str, torch.Tensor]:
    """``logits_to_keep`` and ``shift_labels`` for a ``B × S`` batch (module docstring).

    ``shift_labels``: labels already shifted by the caller (context parallelism does so), used as
    they are; otherwise ``labels`` shifted left by one, the last position unlabelled.
    """
    if labels.dim() != 2:
        raise ValueError(f"loss-only logits need B × S labels, got shape {tuple(labels.shape)}")
    if shift_labels is None:
        shift_labels = F.pad(labels[:, 1:], (0, 1), value=ignore_index)
    keep = (shift_labels != ignore_index).any(0).nonzero().squeeze(1)
    return {"logits_to_keep": keep, "shift_labels": shift_labels[:, keep]}
