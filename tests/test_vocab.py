"""Abstract vocabulary: names, single special ids, kept special tokens, row initialisation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from abscot_plugin.vocab import (
    BEGIN, END, AbstractVocab, add_abstract_tokens, check_tied, has_abstract_tokens,
    init_new_rows, symbol_names,
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
    for name, idx in zip(symbol_names(64) + [BEGIN, END], vocab.all_ids):
        assert tok.encode(name, add_special_tokens=False) == [idx]
    # adding twice is idempotent
    assert add_abstract_tokens(tok, 64) == vocab and len(tok) == n + 66


def test_ordinary_text_never_produces_abstract_ids(tiny_tokenizer, vocab):
    text = "The answer <TOKEN_A> is <beginabstract> 42 TOKEN_B <endabstract> done."
    ids = tiny_tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not set(ids) & set(vocab.all_ids)
    plain = tiny_tokenizer("Ava has 22 apples and TOKEN_A tokens.", add_special_tokens=False)["input_ids"]
    assert not set(plain) & set(vocab.all_ids)


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
