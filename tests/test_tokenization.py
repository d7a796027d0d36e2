"""Free text as plain text (abscot_plugin.tokens.tokenization): ordinary text keeps today's ids, literal
token names in text never become their ids, and a template that rewrites contents is refused."""

from __future__ import annotations

import pytest
from support import read_jsonl

from abscot_plugin.core.prompts import math_messages, prompt_text
from abscot_plugin.core.rows import BadRowError, cot_text, parse_chat_row
from abscot_plugin.testing.fixtures import data_path
from abscot_plugin.tokens.sequences import SequenceBuilder
from abscot_plugin.tokens.tokenization import prompt_ids, text_ids
from abscot_plugin.tokens.vocab import AbstractVocab

LITERALS = "<think> </think> <|im_end|> <|im_start|> <|endoftext|> <tool_call> <TOKEN_A> <beginabstract> <endabstract>"


@pytest.fixture(params=["tiny", "qwen3"])
def tok(request, tiny_tokenizer, qwen3_extended):
    """Both tokenizers with V_abs: the tiny one and Qwen3's real one."""
    return {"tiny": tiny_tokenizer, "qwen3": qwen3_extended}[request.param]


def _whole_string_ids(tok, messages: list[dict[str, str]]) -> list[int]:
    """How prompts were tokenised before: the whole template string, added tokens parsed."""
    return tok(prompt_text(tok, messages), add_special_tokens=False)["input_ids"]


def _old_text_ids(tok, text: str) -> list[int]:
    """How CoTs and answers were tokenised before."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_shipped_rows_keep_their_ids(tok):
    """Every shipped prompt, CoT and answer: the same ids as tokenising the whole string."""
    builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok))
    files = sorted(data_path("dolci_tiny.jsonl").parent.glob("*.jsonl"))
    rows = [row for path in files for row in read_jsonl(path)]
    assert len(files) == 4 and len(rows) == 86  # Dolci, MATH-500, GSM8K, RL prompts
    for row in rows:
        if "messages" in row:  # Dolci-Think
            parsed = parse_chat_row(row, row["id"])
            messages, texts = parsed.messages, [parsed.answer]
            assert builder.cot_ids(parsed) == _old_text_ids(tok, cot_text(parsed.cot))
        else:  # MATH-500 (problem, solution, answer), RL prompts (problem, answer) or GSM8K (question, answer)
            messages = math_messages(row.get("problem") or row["question"])
            texts = [row[key] for key in ("solution", "answer") if key in row]
        assert prompt_ids(tok, messages) == _whole_string_ids(tok, messages)
        for text in texts:
            assert text_ids(tok, text) == _old_text_ids(tok, text)
    # contents that open with whitespace join the template's "user\n" as in the whole string
    messages = [
        {"role": "user", "content": "\n\n  Solve: x + 1 = 2."},
        {"role": "assistant", "content": " ok"},
        {"role": "user", "content": "\tand @@abscot-content-0@@ too"},
    ]
    assert prompt_ids(tok, messages) == _whole_string_ids(tok, messages)


def test_literal_token_names_are_plain_text(tok):
    """No added id (special or not) from text; the template's own tokens stay their ids."""
    added = set(tok.added_tokens_decoder)
    assert not set(text_ids(tok, f"Say {LITERALS} now")) & added
    messages = [{"role": "system", "content": f"S {LITERALS}"}, {"role": "user", "content": f"Q {LITERALS}"}]
    ids = prompt_ids(tok, messages, "lit")
    structure = _whole_string_ids(tok, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert [i for i in ids if i in added] == [i for i in structure if i in added]
    assert tok.decode(ids) == prompt_text(tok, messages)


def test_a_template_that_rewrites_contents_is_refused(tiny_dir):
    from transformers import AutoTokenizer

    from abscot_plugin.testing.fixtures import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    messages = [{"role": "user", "content": "  padded  "}]
    tok.chat_template = CHAT_TEMPLATE.replace("message['content']", "message['content'] | trim")
    with pytest.raises(BadRowError, match="row r1: the chat template changes a message's content") as info:
        prompt_ids(tok, messages, "r1")
    assert info.value.kind == "template"
    tok.chat_template = CHAT_TEMPLATE.replace("message['content']", "message['content'] + message['content']")
    with pytest.raises(BadRowError, match="row r2: .* each message's content exactly once"):
        prompt_ids(tok, messages, "r2")
