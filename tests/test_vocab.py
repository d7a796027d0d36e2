"""Abstract vocabulary: names, single special ids, kept special tokens, row initialisation; the
real Qwen3 tokenizer fixture and where V_abs lands in it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from abscot_plugin.core.prompts import prompt_text
from abscot_plugin.core.symbols import BEGIN, END, symbol_names
from abscot_plugin.testing.fixtures import QWEN3_4B, QWEN3_ADDED_TOKENS
from abscot_plugin.tokens.tokenization import text_ids
from abscot_plugin.tokens.vocab import (
    AbstractVocab,
    add_abstract_tokens,
    check_tied,
    has_abstract_tokens,
    init_new_rows,
)


def test_symbol_names_follow_method():
    names = symbol_names(64)
    assert names[:2] == ["<TOKEN_A>", "<TOKEN_B>"]
    assert names[25] == "<TOKEN_Z>"
    assert names[26] == "<TOKEN_AA>"
    assert names[51] == "<TOKEN_AZ>"
    assert names[52] == "<TOKEN_BA>"
    assert names[63] == "<TOKEN_BL>"
    assert len(set(names)) == 64
    with pytest.raises(ValueError):
        symbol_names(0)


def test_added_tokens_are_single_special_ids_and_keep_existing_specials(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    before = set(tok.all_special_tokens)
    n = len(tok)
    assert not has_abstract_tokens(tok, 64)
    vocab = add_abstract_tokens(tok, 64)
    assert len(tok) == n + 66
    assert before <= set(tok.all_special_tokens)
    assert "<think>" in tok.all_special_tokens and "<|im_end|>" in tok.all_special_tokens
    assert sorted(vocab.all_ids) == list(range(n, n + 66))
    for name, idx in zip(symbol_names(64) + [BEGIN, END], vocab.all_ids, strict=True):
        assert tok.encode(name, add_special_tokens=False) == [idx]
    # adding twice is idempotent
    assert add_abstract_tokens(tok, 64) == vocab and len(tok) == n + 66


def test_ordinary_text_never_produces_abstract_ids(any_builder):
    tok, vocab = any_builder.tok, any_builder.vocab
    text = "The answer <TOKEN_A> is <beginabstract> 42 TOKEN_B <endabstract> done <think></think>."
    assert not set(text_ids(tok, text)) & set(tok.added_tokens_decoder)
    plain = tok("Ava has 22 apples and TOKEN_A tokens.", add_special_tokens=False)["input_ids"]
    assert not set(plain) & set(vocab.all_ids)


# -- Qwen3's real tokenizer (abscot_plugin.testing.fixtures.build_qwen3_tokenizer) ------------------------
def test_qwen3_tokenizer_has_the_published_ids(qwen3_tokenizer):
    tok = qwen3_tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == 151669
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [
        151643,
        151644,
        151645,
        151667,
        151668,
    ]
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    # two of llama.cpp's Qwen2 tokenizer test vectors (NFC, byte-level pieces, one digit a token)
    mixed = "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～"
    assert tok(mixed, add_special_tokens=False)["input_ids"] == [
        9707,
        11,
        379,
        64848,
        0,
        2585,
        525,
        498,
        26525,
        223,
        937,
        104100,
        18493,
        22377,
        99257,
        16,
        18,
        16,
        19,
        16,
        20,
        16,
        35727,
        21216,
    ]
    assert tok("ied 4 ½ months", add_special_tokens=False)["input_ids"] == [1122, 220, 19, 220, 26062, 3951]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    added = [(tok.added_tokens_decoder[i].content, tok.added_tokens_decoder[i].special) for i in range(151643, 151669)]
    assert added == list(QWEN3_ADDED_TOKENS)
    assert dict(added)["<|video_pad|>"] and not dict(added)["<tool_call>"] and not dict(added)["<think>"]
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert prompt_text(tok, messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_abstract_tokens_on_qwen3_fit_its_embedding_without_resize(qwen3_tokenizer, qwen3_extended):
    vocab = AbstractVocab.from_tokenizer(qwen3_extended)
    assert list(vocab.all_ids) == list(range(151669, 151669 + 66)) and len(qwen3_extended) == 151669 + 66
    assert max(vocab.all_ids) < QWEN3_4B["vocab_size"] == 151936  # lands in Qwen3-4B's padding rows
    for name, idx in zip(symbol_names(64) + [BEGIN, END], vocab.all_ids, strict=True):
        assert qwen3_extended.encode(name, add_special_tokens=False) == [idx]
    for idx, token in qwen3_tokenizer.added_tokens_decoder.items():
        kept = qwen3_extended.added_tokens_decoder[idx]
        assert (kept.content, kept.special) == (token.content, token.special)


def test_from_tokenizer_rejects_unextended_tokenizer(tiny_dir):
    with pytest.raises(ValueError, match="not a single token"):
        AbstractVocab.from_tokenizer(AutoTokenizer.from_pretrained(tiny_dir))


@pytest.mark.parametrize("method", ["random", "mean"])
def test_init_new_rows_in_padding_rows_keeps_old_rows_and_tie(tiny_dir, vocab, method):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] > max(vocab.all_ids)  # lands in existing padding rows: no resize
    before = weight.detach().clone()
    ids = list(vocab.all_ids)
    init_new_rows(model, ids, method, seed=3)
    after = model.get_input_embeddings().weight.detach()
    old = torch.ones(after.shape[0], dtype=torch.bool)
    old[ids] = False
    assert torch.equal(after[old], before[old])
    assert not torch.equal(after[ids], before[ids])
    reference = before[: min(ids)]
    if method == "mean":
        assert torch.allclose(after[ids], reference.mean(0).expand(len(ids), -1), atol=1e-6)
    else:
        assert after[ids].std().item() == pytest.approx(reference.std().item(), rel=0.2)
        assert len({tuple(r.tolist()) for r in after[ids]}) == len(ids)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    check_tied(model, ids)


def test_init_is_reproducible(tiny_dir, vocab):
    rows = []
    for _ in range(2):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        init_new_rows(model, list(vocab.all_ids), "random", seed=11)
        rows.append(model.get_input_embeddings().weight[list(vocab.all_ids)].detach().clone())
    assert torch.equal(rows[0], rows[1])


def test_check_tied_detects_an_untied_head(tiny_dir, vocab):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight[vocab.begin_id] += 1.0
    with pytest.raises(RuntimeError, match="no longer tied"):
        check_tied(model, list(vocab.all_ids))
