"""Constrained decoding (abscot_plugin.generation.decode): the stage-1 guarantees on both backends. The HF
decode tests run on the tiny model and on a tiny random Qwen3 with Qwen3's real tokenizer and
151,936-row vocabulary (``models``)."""

from __future__ import annotations

import json

import pytest
import torch
from support import VLLM_GREEDY, VLLM_SAMPLED
from transformers import GenerationConfig

from abscot_plugin.args import RowLayout
from abscot_plugin.core.rows import parse_chat_row
from abscot_plugin.core.traces import TraceSettings
from abscot_plugin.generation.decode import TraceError, check_trace, prompt_seed, two_stage
from abscot_plugin.generation.hf_decoder import HFDecoder
from abscot_plugin.generation.samplers import TraceSampler, trace_log_probs
from abscot_plugin.testing.fixtures import data_path
from abscot_plugin.tokens.sequences import SequenceBuilder
from abscot_plugin.tokens.vocab import AbstractVocab


def load(model_dir):
    """(tokenizer, model, vocab, builder, Phase B prefixes of the first five Dolci rows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    vocab = AbstractVocab.from_tokenizer(tok, 64)
    builder = SequenceBuilder(tok, vocab)
    rows = [json.loads(line) for line in data_path("dolci_tiny.jsonl").read_text().splitlines()][:5]
    prefixes = [builder.phase_b_prefix(parse_chat_row(r, r["id"])) for r in rows]
    return tok, model, vocab, builder, prefixes


@pytest.fixture(scope="module")
def tiny(tiny_extended):
    return load(tiny_extended)


@pytest.fixture(scope="module", params=["tiny", "qwen3"])
def models(request, tiny):
    """The tiny model, then a tiny random Qwen3 on Qwen3's real tokenizer and vocabulary."""
    return tiny if request.param == "tiny" else load(request.getfixturevalue("qwen3_tiny_extended"))


@pytest.fixture(scope="module")
def mixed_prefixes(models):
    """Phase B prefixes (~50 tokens) and Phase A ones (130 to 500 tokens): batches of these are
    left-padded by up to ~450 positions, so batch shapes differ a lot between batchings."""
    _, _, _, builder, prefixes = models
    rows = [json.loads(line) for line in data_path("dolci_tiny.jsonl").read_text().splitlines()][:4]
    return prefixes + [builder.phase_a_prefix(parse_chat_row(r, r["id"]), RowLayout(4096, 128, "end"))[0] for r in rows]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="m_min <= m_max"):
        TraceSettings(m_min=10, m_max=5)
    with pytest.raises(ValueError, match="temperature"):
        TraceSettings(temperature=-1)


def test_trace_distribution_allowed_sets_temperature_top_p():
    vocab = AbstractVocab(("<TOKEN_A>", "<TOKEN_B>", "<TOKEN_C>"), (3, 4, 5), 6, 7)
    logits = torch.zeros(1, 10)
    logits[0, [3, 4, 5, 7]] = torch.tensor([2.0, 1.0, 0.0, 100.0])  # the model wants END right away
    settings = TraceSettings(m_min=2, m_max=3, temperature=1.0)

    def allowed(generated: int) -> list[int]:
        return trace_log_probs(logits, generated, vocab, settings)[0].tolist()

    assert allowed(0) == allowed(1) == [3, 4, 5]  # END forbidden below m_min
    assert allowed(2) == [3, 4, 5, 7]
    assert allowed(3) == [7]  # END forced at m_max
    _, log_probs = trace_log_probs(logits, 0, vocab, TraceSettings(m_min=2, m_max=3, temperature=0.5))
    torch.testing.assert_close(log_probs[0], torch.tensor([4.0, 2.0, 0.0]).log_softmax(-1))
    # top-p 0.8: A (0.665) alone is below 0.8, A and B (0.910) reach it; C is dropped
    ids, log_probs = trace_log_probs(logits, 0, vocab, TraceSettings(m_min=2, m_max=3, temperature=1.0, top_p=0.8))
    torch.testing.assert_close(log_probs[0, :2], torch.tensor([2.0, 1.0]).log_softmax(-1))
    assert log_probs[0, 2] == float("-inf")
    _, greedy = trace_log_probs(logits, 2, vocab, TraceSettings(m_min=2, m_max=3, temperature=0.0))
    assert greedy[0].tolist() == [float("-inf")] * 3 + [0.0]


def test_check_trace():
    vocab = AbstractVocab(("<TOKEN_A>", "<TOKEN_B>"), (3, 4), 5, 6)
    settings = TraceSettings(m_min=2, m_max=3)
    assert check_trace((3, 4), vocab, settings) == [3, 4]
    for bad in ([3], [3, 4, 3, 4], [3, 6], [3, 5, 4]):
        with pytest.raises(TraceError):
            check_trace(bad, vocab, settings)


def test_hf_traces_valid_and_seeded(models):
    tok, model, vocab, _, prefixes = models
    decoder = HFDecoder(model, tok, vocab, batch_size=2)
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


def test_hf_traces_do_not_depend_on_batching(models, mixed_prefixes):
    """A prompt's trace is the same alone, in a batch of 8, in another order (each prompt has
    its own seed, not its batch's)."""
    tok, model, vocab, _, _ = models
    settings = TraceSettings(m_min=3, m_max=12, temperature=1.0, top_p=0.95, seed=7)
    alone = HFDecoder(model, tok, vocab, batch_size=1).traces(mixed_prefixes, settings)
    batched = HFDecoder(model, tok, vocab, batch_size=8).traces(mixed_prefixes, settings)
    order = [7, 2, 5, 0, 8, 3, 1, 6, 4]
    shuffled = HFDecoder(model, tok, vocab, batch_size=3).traces([mixed_prefixes[i] for i in order], settings)
    assert batched == alone
    assert [shuffled[order.index(i)] for i in range(len(order))] == alone
    assert len({tuple(t) for t in alone}) == len(alone)  # sampled, not one fixed trace


def test_temperature_zero_is_the_constrained_argmax(models, mixed_prefixes):
    tok, model, vocab, _, _ = models
    settings = TraceSettings(m_min=2, m_max=6, temperature=0.0)
    traces = HFDecoder(model, tok, vocab, batch_size=4).traces(mixed_prefixes[3:7], settings)
    allowed_end = list(vocab.symbol_ids) + [vocab.end_id]
    for prefix, trace in zip(mixed_prefixes[3:7], traces, strict=True):
        ids, expect = list(prefix), []
        while len(expect) < settings.m_max:
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1]
            allowed = list(vocab.symbol_ids) if len(expect) < settings.m_min else allowed_end
            token = allowed[int(logits[allowed].argmax())]
            if token == vocab.end_id:
                break
            expect.append(token)
            ids.append(token)
        assert trace == expect


def test_sampled_first_tokens_follow_the_constrained_softmax(tiny):
    """One prefix, 3000 seeds (one batch through ``generate``, as HFDecoder runs it): every trace
    keeps m_min..m_max, and the first symbols' frequencies match trace_log_probs: chi-square
    below the p = 1e-6 threshold (61 here), while against a uniform draw it is far above (391).
    Tiny model only: on the real vocabulary a step's logits would take 3000 × 151,936 × 4 bytes."""
    tok, model, vocab, _, prefixes = tiny
    settings = TraceSettings(m_min=2, m_max=4, temperature=0.7, top_p=0.95)
    prefix, n = prefixes[0][-8:], 3000  # the prompt's end: short, so that the big batch is fast
    ids = torch.tensor([prefix] * n)
    sampler = TraceSampler(vocab, ids.shape[1], settings, [prompt_seed(s, prefix) for s in range(n)])
    decoder = HFDecoder(model, tok, vocab)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=settings.m_max + 1, eos_token_id=vocab.end_id, pad_token_id=decoder.pad_id
    )
    rows = decoder._generate(ids, torch.ones_like(ids), config, [sampler])
    traces = [check_trace(r[: r.index(vocab.end_id)] if vocab.end_id in r else r, vocab, settings) for r in rows]
    assert {len(t) for t in traces} == {2, 3, 4}
    with torch.no_grad():
        logits = model(ids[:1]).logits[:, -1]
    allowed, log_probs = trace_log_probs(logits, 0, vocab, settings)
    expected = log_probs[0].exp() * n
    counts = torch.zeros_like(expected)
    for trace in traces:
        counts[allowed.tolist().index(trace[0])] += 1
    kept = expected > 0
    assert counts[~kept].sum() == 0 and (~kept).any()  # top-p removed some ids: never drawn
    chi2 = float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())
    uniform = torch.full_like(expected[kept], n / int(kept.sum()))
    chi2_uniform = float(((counts[kept] - uniform) ** 2 / uniform).sum())
    threshold = 130.0  # chi-square with ~60 degrees of freedom: P(> 130) < 1e-6
    assert chi2 < threshold < chi2_uniform, (chi2, chi2_uniform)


def test_hf_complete_batching_and_stop(models):
    tok, model, vocab, builder, prefixes = models
    decoder = HFDecoder(model, tok, vocab, batch_size=3)
    batched = decoder.complete(prefixes, 6, [builder.end_of_turn])
    alone = [decoder.complete([p], 6, [builder.end_of_turn])[0] for p in prefixes[:2]]
    assert batched[:2] == alone  # left padding does not change a greedy decode
    assert all(len(out) == 6 for out in batched if builder.end_of_turn not in out)
    first = batched[0][0]
    cut = decoder.complete([prefixes[0]], 6, [first])[0]
    assert cut == []  # the stop token itself is not returned


def test_two_stage_answers_after_trace_and_end(models):
    tok, model, vocab, builder, prefixes = models
    decoder = HFDecoder(model, tok, vocab, batch_size=4)
    settings = TraceSettings(m_min=2, m_max=6, temperature=0.0)
    outs = two_stage(decoder, prefixes[:3], settings, 5, [builder.end_of_turn], builder)
    for prefix, out in zip(prefixes[:3], outs, strict=True):
        check_trace(out.trace, vocab, settings)
        stage2 = prefix + out.trace + [vocab.end_id] + builder.newline_ids
        assert decoder.complete([stage2], 5, [builder.end_of_turn])[0] == out.answer


def test_vllm_traces_match_hf_guarantees(tiny, vllm_run):
    """vLLM (CPU build, own venv): same guarantees; greedy traces and answers equal HF's."""
    tok, model, vocab, builder, prefixes = tiny
    assert vllm_run["prefixes"] == prefixes
    for kw, traces in zip(VLLM_SAMPLED, vllm_run["traces"], strict=True):
        for trace in traces:
            check_trace(trace, vocab, TraceSettings(**kw))
    assert [len(t) for t in vllm_run["traces"][1]] == [5] * len(prefixes)
    hf = HFDecoder(model, tok, vocab, batch_size=8)
    assert vllm_run["greedy"] == hf.traces(prefixes, TraceSettings(**VLLM_GREEDY))
    hf_two = two_stage(hf, prefixes, TraceSettings(**VLLM_GREEDY), 5, [builder.end_of_turn], builder)
    assert vllm_run["two_stage"] == [{"trace": o.trace, "answer": o.answer} for o in hf_two]
