"""Constrained decoding (abscot_plugin.decode): the stage-1 guarantees on both backends."""

from __future__ import annotations

import json

import pytest
import torch
from support import VLLM_GREEDY, VLLM_SAMPLED

from abscot_plugin.decode import (
    HFDecoder,
    TraceError,
    TraceMaskProcessor,
    TraceSettings,
    check_trace,
    two_stage,
)
from abscot_plugin.fixtures import data_path
from abscot_plugin.prompts import parse_chat_row
from abscot_plugin.sequences import SequenceBuilder
from abscot_plugin.vocab import AbstractVocab


@pytest.fixture(scope="module")
def tiny(tiny_extended):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_extended)
    model = AutoModelForCausalLM.from_pretrained(tiny_extended)
    vocab = AbstractVocab.from_tokenizer(tok, 64)
    builder = SequenceBuilder(tok, vocab)
    rows = [json.loads(line) for line in data_path("dolci_tiny.jsonl").read_text().splitlines()][:5]
    prefixes = [builder.phase_b_prefix(parse_chat_row(r, r["id"]))[0] for r in rows]
    return tok, model, vocab, builder, prefixes


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="m_min <= m_max"):
        TraceSettings(m_min=10, m_max=5)
    with pytest.raises(ValueError, match="temperature"):
        TraceSettings(temperature=-1)


def test_mask_processor_floor_and_ceiling():
    vocab = AbstractVocab(("<TOKEN_A>", "<TOKEN_B>"), (3, 4), 5, 6)
    proc = TraceMaskProcessor(vocab, prompt_len=2, m_min=2, m_max=3)
    scores = torch.zeros(1, 10)
    scores[0, 6] = 100.0  # the model wants END right away

    def allowed(generated: int) -> set[int]:
        out = proc(torch.zeros(1, 2 + generated, dtype=torch.long), scores)
        return set(torch.nonzero(out[0] > float("-inf")).flatten().tolist())

    assert allowed(0) == allowed(1) == {3, 4}  # END forbidden below m_min
    assert allowed(2) == {3, 4, 6}
    assert allowed(3) == {6}  # END forced at m_max


def test_check_trace():
    vocab = AbstractVocab(("<TOKEN_A>", "<TOKEN_B>"), (3, 4), 5, 6)
    settings = TraceSettings(m_min=2, m_max=3)
    assert check_trace((3, 4), vocab, settings) == [3, 4]
    for bad in ([3], [3, 4, 3, 4], [3, 6], [3, 5, 4]):
        with pytest.raises(TraceError):
            check_trace(bad, vocab, settings)


def test_hf_traces_valid_and_seeded(tiny):
    _, model, vocab, _, prefixes = tiny
    decoder = HFDecoder(model, tiny[0], vocab, batch_size=2)
    settings = TraceSettings(m_min=3, m_max=12, temperature=1.5)
    traces = decoder.traces(prefixes, settings)
    assert len(traces) == len(prefixes)
    for trace in traces:
        assert set(trace) <= set(vocab.symbol_ids) and 3 <= len(trace) <= 12
    assert decoder.traces(prefixes, settings) == traces
    assert decoder.traces(prefixes, TraceSettings(m_min=3, m_max=12, temperature=1.5, seed=1)) != traces
    # m_min == m_max: END is both forbidden before and forced at that length
    exact = decoder.traces(prefixes, TraceSettings(m_min=5, m_max=5))
    assert [len(t) for t in exact] == [5] * len(prefixes)


def test_hf_complete_batching_and_stop(tiny):
    tok, model, vocab, builder, prefixes = tiny
    decoder = HFDecoder(model, tok, vocab, batch_size=3)
    batched = decoder.complete(prefixes, 6, [builder.end_of_turn])
    alone = [decoder.complete([p], 6, [builder.end_of_turn])[0] for p in prefixes[:2]]
    assert batched[:2] == alone  # left padding does not change a greedy decode
    assert all(len(out) == 6 for out in batched if builder.end_of_turn not in out)
    first = batched[0][0]
    cut = decoder.complete([prefixes[0]], 6, [first])[0]
    assert cut == []  # the stop token itself is not returned


def test_two_stage_answers_after_trace_and_end(tiny):
    tok, model, vocab, builder, prefixes = tiny
    decoder = HFDecoder(model, tok, vocab, batch_size=4)
    settings = TraceSettings(m_min=2, m_max=6, temperature=0.0)
    outs = two_stage(decoder, prefixes[:3], settings, 5, [builder.end_of_turn], builder)
    for prefix, out in zip(prefixes, outs):
        check_trace(out.trace, vocab, settings)
        stage2 = prefix + out.trace + [vocab.end_id] + builder.newline_ids
        assert decoder.complete([stage2], 5, [builder.end_of_turn])[0] == out.answer
        assert out.num_tokens == len(out.trace) + len(out.answer)


def test_vllm_traces_match_hf_guarantees(tiny, vllm_run):
    """vLLM (CPU build, own venv): same guarantees; greedy traces and answers equal HF's."""
    tok, model, vocab, builder, prefixes = tiny
    assert vllm_run["prefixes"] == prefixes
    for kw, traces in zip(VLLM_SAMPLED, vllm_run["traces"]):
        for trace in traces:
            check_trace(trace, vocab, TraceSettings(**kw))
    assert [len(t) for t in vllm_run["traces"][1]] == [5] * len(prefixes)
    hf = HFDecoder(model, tok, vocab, batch_size=8)
    assert vllm_run["greedy"] == hf.traces(prefixes, TraceSettings(**VLLM_GREEDY))
    hf_two = two_stage(hf, prefixes, TraceSettings(**VLLM_GREEDY), 5, [builder.end_of_turn], builder)
    assert vllm_run["two_stage"] == [{"trace": o.trace, "answer": o.answer} for o in hf_two]
