"""Per-token segment codes and the Phase A bottleneck attention masks built from them.

A row's ``segment_ids`` column marks each token as prompt, CoT, abstract or answer. The mask is
causal except that no answer position attends to a CoT position. It is built on the device inside
the trainer, once per step (never a B×S×S tensor in the dataloader):

* :func:`block_mask` — a FlexAttention ``BlockMask`` (``attn_implementation: flex_attention``);
* :func:`dense_mask` — a boolean (SDPA) or additive float (eager) ``B×1×S×S`` mask.
"""

from __future__ import annotations

import torch

PROMPT, COT, ABSTRACT, ANSWER = 0, 1, 2, 3
PAD = -1
NAMES = {PROMPT: "prompt", COT: "cot", ABSTRACT: "abstract", ANSWER: "answer", PAD: "pad"}


def allowed(seg_q: torch.Tensor, seg_k: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The bottleneck rule for query/key positions with segment codes (broadcasting)."""
    causal = k <= q
    blocked = (seg_q == ANSWER) & (seg_k == COT)
    # padding keys are never seen by real queries; padding queries see their causal past so
    # that no softmax row is empty (their outputs carry no loss).
    key_ok = (seg_k != PAD) | (seg_q == PAD)
    return causal & ~blocked & key_ok


def dense_mask(segment_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``B×1×S×S`` mask: bool (True = attend) when ``dtype`` is None, else additive (0 / min)."""
    seq = segment_ids.shape[1]
    pos = torch.arange(seq, device=segment_ids.device)
    mask = allowed(
        segment_ids[:, :, None], segment_ids[:, None, :], pos[:, None], pos[None, :]
    )[:, None]
    if dtype is None:
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


def block_mask(segment_ids: torch.Tensor, num_heads: int | None = None):
    """FlexAttention ``BlockMask`` for the bottleneck rule (heads broadcast)."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(seg[b, q_idx], seg[b, kv_idx], q_idx, kv_idx)

    batch, seq = seg.shape
    return create_block_mask(
        mask_mod, B=batch, H=num_heads, Q_LEN=seq, KV_LEN=seq, device=seg.device
    )
