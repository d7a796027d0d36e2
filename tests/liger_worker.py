"""Run by tests/test_liger.py in a process of its own (Liger's patches replace transformers' Qwen3
classes and functions for the whole process). Prints one JSON object:

1. ``loss_*`` / ``*_diff``: Liger's fused-linear-cross-entropy forward (``lce_forward``, installed
   alone: RMSNorm, SwiGLU and RoPE are Triton kernels that cannot run on a CPU) given the trainer's
   loss-only inputs and the bottleneck mask, in eval mode, where it projects the kept positions
   with the lm_head instead of calling its Triton kernel: its loss against the stock forward's
   full-logits loss, and how far answer and abstract logits move when the CoT ids change.
2. ``kept`` / ``replaced``: after axolotl's Liger plugin applies every Qwen3 kernel (rope, RMSNorm,
   SwiGLU, fused linear cross-entropy), which names of the attention path are the same objects as
   before and which of Liger's targets were replaced.
"""

from __future__ import annotations

import json

import torch
from transformers import masking_utils
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3 import modeling_qwen3

from abscot_plugin.testing.fixtures import tiny_config
from abscot_plugin.tokens import segments as seg
from abscot_plugin.tokens.segments import bottleneck_attention_mask
from abscot_plugin.tokens.sequences import IGNORE
from abscot_plugin.train.loss_logits import loss_only_inputs

ATTENTION_PATH = {
    "Qwen3Attention.forward": lambda: modeling_qwen3.Qwen3Attention.forward,
    "Qwen3DecoderLayer.forward": lambda: modeling_qwen3.Qwen3DecoderLayer.forward,
    "Qwen3Model.forward": lambda: modeling_qwen3.Qwen3Model.forward,
    "modeling_qwen3.eager_attention_forward": lambda: modeling_qwen3.eager_attention_forward,
    "modeling_qwen3.create_causal_mask": lambda: modeling_qwen3.create_causal_mask,
    "masking_utils.create_causal_mask": lambda: masking_utils.create_causal_mask,
    "attention functions: sdpa": lambda: ALL_ATTENTION_FUNCTIONS["sdpa"],
    "attention functions: flex_attention": lambda: ALL_ATTENTION_FUNCTIONS["flex_attention"],
}
LIGER_TARGETS = {
    "Qwen3RMSNorm": lambda: modeling_qwen3.Qwen3RMSNorm,
    "Qwen3MLP": lambda: modeling_qwen3.Qwen3MLP,
    "apply_rotary_pos_emb": lambda: modeling_qwen3.apply_rotary_pos_emb,
    "Qwen3ForCausalLM.forward": lambda: modeling_qwen3.Qwen3ForCausalLM.forward,
}


def phase_a_batch() -> dict[str, torch.Tensor]:
    """Two rows [prompt 8 | CoT 24 | abstract 6 | answer 10], labels on abstract and answer."""
    segments = torch.tensor([[seg.PROMPT] * 8 + [seg.COT] * 24 + [seg.ABSTRACT] * 6 + [seg.ANSWER] * 10] * 2)
    ids = torch.randint(5, 800, segments.shape, generator=torch.Generator().manual_seed(0))
    labels = ids.masked_fill((segments != seg.ABSTRACT) & (segments != seg.ANSWER), IGNORE)
    return {"input_ids": ids, "segment_ids": segments, "labels": labels}


def fused_forward_check() -> dict[str, float]:
    from liger_kernel.transformers import apply_liger_kernel_to_qwen3

    stock_forward = modeling_qwen3.Qwen3ForCausalLM.forward
    apply_liger_kernel_to_qwen3(rope=False, rms_norm=False, swiglu=False, fused_linear_cross_entropy=True)
    assert modeling_qwen3.Qwen3ForCausalLM.forward is not stock_forward
    torch.manual_seed(0)
    config = tiny_config(896, 1)  # one layer: the answer could learn of the CoT only through deeper ones
    config._attn_implementation = "sdpa"
    model = modeling_qwen3.Qwen3ForCausalLM(config).eval()
    batch = phase_a_batch()
    mask = bottleneck_attention_mask(config, batch["segment_ids"], torch.float32)
    kept = loss_only_inputs(batch["labels"])
    with torch.no_grad():
        stock = stock_forward(model, input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"])
        liger = model(input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"], **kept)
        other_ids = batch["input_ids"].masked_fill(batch["segment_ids"] == seg.COT, 3)  # another CoT
        moved = model(input_ids=other_ids, attention_mask=mask, labels=batch["labels"], **kept)
    own = batch["segment_ids"][:, kept["logits_to_keep"]]  # the segment of each kept position
    change = (liger.logits - moved.logits).abs().amax(-1)
    return {
        "loss_stock": stock.loss.item(),
        "loss_liger": liger.loss.item(),
        "kept_positions": int(kept["logits_to_keep"].numel()),
        "liger_logit_positions": liger.logits.shape[1],
        "answer_diff": change[own == seg.ANSWER].max().item(),
        "abstract_diff": change[own == seg.ABSTRACT].max().item(),
    }


def plugin_patches(before: dict) -> dict[str, list[str]]:
    """What axolotl's Liger plugin changes, against ``before`` (taken before any Liger patch)."""
    from axolotl.integrations.liger.plugin import LigerPlugin
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(
        model_config_type="qwen3",
        liger_rope=True,
        liger_rms_norm=True,
        liger_glu_activation=True,
        liger_fused_linear_cross_entropy=True,
    )
    LigerPlugin().pre_model_load(cfg)
    return {
        "kept": [name for name, get in ATTENTION_PATH.items() if get() is before[name]],
        "replaced": [name for name, get in LIGER_TARGETS.items() if get() is not before[name]],
    }


if __name__ == "__main__":
    untouched = {name: get() for name, get in {**ATTENTION_PATH, **LIGER_TARGETS}.items()}
    result = fused_forward_check()
    result.update(plugin_patches(untouched))
    print(json.dumps(result))
