"""The bottleneck mask: no answer position sees the CoT, on every attention backend."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3ForCausalLM

from abscot_plugin.args import RowLayout
from abscot_plugin.core.choices import Phase
from abscot_plugin.core.rows import parse_chat_row
from abscot_plugin.testing.fixtures import tiny_config
from abscot_plugin.tokens import segments as seg
from abscot_plugin.tokens.segments import bottleneck_attention_mask
from abscot_plugin.train.collator import SegmentCollator


def tiny_model(layers: int, attn: str = "eager") -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(896, layers)
    config._attn_implementation = attn
    return Qwen3ForCausalLM(config).eval()


def example(builder, vocab, row, trace_len=12):
    parsed = parse_chat_row(row, row["id"])
    ex = builder.example(parsed, list(vocab.symbol_ids[:trace_len]), Phase.A, RowLayout(4096, 128, "end"))
    return torch.tensor([ex.input_ids]), torch.tensor([ex.segment_ids])


def logits(model, ids, segments, attn=None):
    if attn:
        model.set_attn_implementation(attn)
    mask = bottleneck_attention_mask(model.config, segments, next(model.parameters()).dtype)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_one_layer_answer_ignores_cot_but_abstract_sees_it(builder, vocab, dolci_rows):
    """With one layer the answer could only learn about c through deeper layers: its logits must
    not move when the CoT tokens change, while the abstract positions' logits do."""
    model = tiny_model(layers=1)
    ids, segs = example(builder, vocab, dolci_rows[1])
    cot = segs[0] == seg.COT
    other = ids.clone()
    other[0, cot] = torch.randint(5, 700, (int(cot.sum()),), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, ids)
    a, b = logits(model, ids, segs), logits(model, other, segs)
    answer = segs[0] == seg.ANSWER
    abstract = segs[0] == seg.ABSTRACT
    assert torch.allclose(a[0, answer], b[0, answer], atol=1e-5)
    assert (a[0, abstract] - b[0, abstract]).abs().max() > 1e-3
    # control: with a plain causal mask the answer does see the CoT
    with torch.no_grad():
        causal_a, causal_b = model(input_ids=ids).logits, model(input_ids=other).logits
    assert (causal_a[0, answer] - causal_b[0, answer]).abs().max() > 1e-3


def test_attention_from_answer_to_cot_is_exactly_zero_in_every_layer(builder, vocab, dolci_rows):
    model = tiny_model(layers=3)
    ids, segs = example(builder, vocab, dolci_rows[2])
    mask = bottleneck_attention_mask(model.config, segs, torch.float32)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    answer = (segs[0] == seg.ANSWER).nonzero().flatten()
    cot = (segs[0] == seg.COT).nonzero().flatten()
    abstract = (segs[0] == seg.ABSTRACT).nonzero().flatten()
    assert len(out.attentions) == 3
    for layer in out.attentions:
        assert torch.count_nonzero(layer[0][:, answer][:, :, cot]) == 0
        # abstract positions do attend to the CoT, answer positions to prompt and trace
        assert layer[0][:, abstract][:, :, cot].sum() > 0
        assert layer[0][:, answer][:, :, abstract].sum() > 0
        assert torch.allclose(layer.sum(-1), torch.ones(()), atol=1e-5)


def test_sdpa_flex_and_eager_agree_with_padding(builder, vocab, tiny_tokenizer, dolci_rows):
    """One padded batch through the collator gives the same logits on every backend, and each
    row's logits equal those of the row alone."""
    model = tiny_model(layers=2)
    rows = [example(builder, vocab, r, trace_len=n) for r, n in ((dolci_rows[1], 8), (dolci_rows[4], 20))]
    features = [
        {
            "input_ids": i[0].tolist(),
            "attention_mask": [1] * i.shape[1],
            "labels": i[0].tolist(),
            "segment_ids": s[0].tolist(),
        }
        for i, s in rows
    ]
    batch = SegmentCollator(tiny_tokenizer, padding=True, return_tensors="pt")(features)
    assert batch["segment_ids"].shape == batch["input_ids"].shape
    assert batch["segment_ids"].dtype == torch.int8
    lengths = [i.shape[1] for i, _ in rows]
    assert (batch["segment_ids"][0, lengths[0] :] == seg.PAD).all() or lengths[0] == max(lengths)
    results = {
        attn: logits(model, batch["input_ids"], batch["segment_ids"], attn)
        for attn in ("eager", "sdpa", "flex_attention")
    }
    mask = bottleneck_attention_mask(model.config, batch["segment_ids"], torch.float32)
    assert type(mask).__name__ == "BlockMask"
    for attn in ("sdpa", "flex_attention"):
        for b, n in enumerate(lengths):
            diff = (results[attn][b, :n] - results["eager"][b, :n]).abs().max().item()
            assert diff < 1e-4, (attn, diff)
    for b, (ids, segs) in enumerate(rows):
        alone = logits(model, ids, segs, "sdpa")
        assert torch.allclose(alone[0], results["sdpa"][b, : ids.shape[1]], atol=1e-4)


def test_mask_kind_follows_backend_and_rejects_flash():
    config = tiny_config(896, 1)
    segs = torch.tensor([[0, 1, 1, 2, 3, seg.PAD]])
    config._attn_implementation = "sdpa"
    dense = bottleneck_attention_mask(config, segs, torch.float32)
    assert dense.dtype == torch.bool and dense.shape == (1, 1, 6, 6)
    assert not dense[0, 0, 4, 1] and not dense[0, 0, 4, 2] and dense[0, 0, 4, 3] and dense[0, 0, 3, 1]
    config._attn_implementation = "eager"
    additive = bottleneck_attention_mask(config, segs, torch.float32)
    assert additive[0, 0, 4, 1] == torch.finfo(torch.float32).min and additive[0, 0, 4, 3] == 0
    config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="flex_attention, sdpa or eager"):
        bottleneck_attention_mask(config, segs, torch.float32)
