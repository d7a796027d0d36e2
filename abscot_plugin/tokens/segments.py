"""Per-token segment codes and the Phase A bottleneck attention masks built from them.

A row's ``segment_ids`` column marks each token as prompt, CoT, abstract or answer. The mask is
causal except that no answer position attends to a CoT position. It is built on the device inside
the trainer, once per step (never a B×S×S tensor in the dataloader):

* :func:`block_mask` — a FlexAttention ``BlockMask`` (``attn_implementation: flex_attention``);
* :func:`dense_mask` — a boolean (SDPA) or additive float (eager) ``B×1×S×S`` mask;
* :func:`bottleneck_attention_mask` — whichever of the two the model's attention backend takes.

Pure torch (no axolotl), so that the benchmarks can run it where axolotl is not installed.
"""

from __future__ import annotations

import functools

import torch

PROMPT, COT, ABSTRACT, ANSWER = 0, 1, 2, 3
PAD = -1


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
    mask = allowed(segment_ids[:, :, None], segment_ids[:, None, :], pos[:, None], pos[None, :])[:, None]
    if dtype is None:
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(dtype).min)


def _build_block_mask(mask_mod, batch: int, heads: int | None, seq: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, B=batch, H=heads, Q_LEN=seq, KV_LEN=seq, device=device)


@functools.cache
def _compiled_block_mask_builder():
    """``create_block_mask`` under ``torch.compile``, made once per process on first use.

    Uncompiled, ``create_block_mask`` evaluates ``mask_mod`` densely (B×H×S×S through vmap),
    which made the flex forward 1.5–1.8× plain causal at S = 2048–4096 on CPU, with ~4× its peak
    memory at 4096 (bench/README.md). The compile wraps a function of our own so that its dynamo
    cache entries (and recompile budget) are not shared with transformers' compiled
    ``create_block_mask``.
    Automatic dynamic shapes (the default): the first length gets a static graph; a second length
    recompiles once to a graph dynamic in the length, which serves every later length (a new batch
    size likewise recompiles once). ``dynamic=False`` would recompile at every new length (and fall
    back to the uncompiled path past dynamo's recompile limit); ``dynamic=True`` saves that one
    recompile but builds ~2× slower at a fixed length. A new ``segment_ids`` tensor of a seen shape
    never recompiles. One path for CPU and CUDA.
    """
    return torch.compile(_build_block_mask)


def block_mask(segment_ids: torch.Tensor, num_heads: int | None = None):
    """FlexAttention ``BlockMask`` for the bottleneck rule (heads broadcast), built compiled."""
    seg = segment_ids

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(seg[b, q_idx], seg[b, kv_idx], q_idx, kv_idx)

    batch, seq = seg.shape
    return _compiled_block_mask_builder()(mask_mod, batch, num_heads, seq, seg.device)


def bottleneck_attention_mask(config, segment_ids: torch.Tensor, dtype: torch.dtype):
    """The mask for the model's attention backend (``config._attn_implementation``, default sdpa):
    a BlockMask for flex, bool for SDPA, additive float for eager."""
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    seg = segment_ids.long()
    if impl == "flex_attention":
        return block_mask(seg)
    if impl == "sdpa":
        return dense_mask(seg)
    if impl == "eager":
        return dense_mask(seg, dtype)
    raise ValueError(f"the bottleneck mask needs attn_implementation flex_attention, sdpa or eager, not {impl!r}")
