"""Token-level layout of Abstract-CoT sequences, shared by training, trace generation and eval.

Phase A (bottleneck):    x  c  <beginabstract> z <endabstract>  \\n y <|im_end|>
Phase B (self-distill):  x     <beginabstract> z <endabstract>  \\n y <|im_end|>

Labels cover z, ``<endabstract>`` and ``\\n y <|im_end|>``; never x, c or ``<beginabstract>``
(which the decoder is given). Prefixes for generation are built here too, from the same pieces,
so a training prompt and a decode prompt are the same ids.

Text is tokenised by :mod:`abscot_plugin.tokenization`: the CoT c and answer y are plain text, and
x keeps only the chat template's own structure tokens, so text that spells ``<think>``,
``<|im_end|>`` or an abstract token never yields that token's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from . import segments as seg
from . import tokenization
from .prompts import BadRowError, ReasoningRow, cot_steps, cot_text
from .traces import random_trace
from .vocab import AbstractVocab

IGNORE = -100
CotKeep = Literal["end", "start", "both_ends"]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    segment_ids: list[int]
    cot_cut: int  # CoT tokens removed to fit sequence_len


class SequenceBuilder:
    """Tokenises rows into Phase A / Phase B examples and generation prefixes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab: AbstractVocab):
        self.tok = tokenizer
        self.vocab = vocab
        self.newline_ids = self._text_ids("\n")
        eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if eot is None or eot == tokenizer.unk_token_id:
            raise ValueError("tokenizer has no <|im_end|> token (a Qwen3-style chat tokenizer is needed)")
        self.end_of_turn = eot

    def _text_ids(self, text: str) -> list[int]:
        """Ids of free text, as plain text (:func:`~abscot_plugin.tokenization.text_ids`)."""
        return tokenization.text_ids(self.tok, text)

    def prompt_ids(self, row: ReasoningRow) -> list[int]:
        """x: the chat-template prompt, its contents plain text (:func:`.tokenization.prompt_ids`)."""
        return tokenization.prompt_ids(self.tok, row.messages, row.row_id)

    def cot_ids(self, row: ReasoningRow) -> list[int]:
        return self._text_ids(cot_text(row.cot))

    def random_trace_ids(self, row: ReasoningRow, num_symbols: int, seed: int, m_max: int) -> list[int]:
        """Round-1 random trace, step lengths measured in this tokenizer's tokens."""
        steps = cot_steps(row.cot)
        lengths = [len(self._text_ids(step)) for step in steps]
        names = random_trace(lengths, row.row_id, num_symbols, seed, m_max)
        return self.tok.convert_tokens_to_ids(names)

    def trace_ids(self, trace: str) -> list[int]:
        """Ids of a validated trace string."""
        return self.tok(trace, add_special_tokens=False)["input_ids"]

    # -- generation prefixes -------------------------------------------------------------
    def phase_a_prefix(self, row: ReasoningRow, max_len: int | None = None) -> tuple[list[int], int]:
        """x c <beginabstract>, left-truncated to ``max_len`` (keeping the end); returns the
        ids and how many tokens were cut."""
        return _left_truncate(self.prompt_ids(row) + self.cot_ids(row) + [self.vocab.begin_id], max_len)

    def phase_b_prefix(self, row: ReasoningRow, max_len: int | None = None) -> tuple[list[int], int]:
        """x <beginabstract>, left-truncated to ``max_len``."""
        return _left_truncate(self.prompt_ids(row) + [self.vocab.begin_id], max_len)

    def answer_prefix_suffix(self, trace_ids: list[int]) -> list[int]:
        """What follows x <beginabstract> before the answer: z <endabstract> \\n."""
        return list(trace_ids) + [self.vocab.end_id] + self.newline_ids

    # -- training examples ---------------------------------------------------------------
    def example(
        self,
        row: ReasoningRow,
        trace_ids: list[int],
        with_cot: bool,
        sequence_len: int,
        cot_keep: CotKeep = "end",
    ) -> Example:
        """Build one training example; the CoT (only) is cut to fit ``sequence_len``."""
        x = self.prompt_ids(row)
        c = self.cot_ids(row) if with_cot else []
        z = [self.vocab.begin_id] + list(trace_ids) + [self.vocab.end_id]
        y = self.newline_ids + self._text_ids(row.answer) + [self.end_of_turn]
        fixed = len(x) + len(z) + len(y)
        if fixed > sequence_len:
            raise BadRowError(
                row.row_id, "too_long",
                f"prompt + trace + answer take {fixed} tokens, more than sequence_len={sequence_len}",
            )
        cut = max(0, len(c) - (sequence_len - fixed))
        c = _cut(c, cut, cot_keep)
        if with_cot and not c:
            raise BadRowError(row.row_id, "too_long", f"no room left for the CoT within sequence_len={sequence_len}")
        ids = x + c + z + y
        labels = [IGNORE] * (len(x) + len(c) + 1) + z[1:] + y
        segments = (
            [seg.PROMPT] * len(x) + [seg.COT] * len(c) + [seg.ABSTRACT] * len(z) + [seg.ANSWER] * len(y)
        )
        return Example(ids, labels, segments, cut)


def _left_truncate(ids: list[int], max_len: int | None) -> tuple[list[int], int]:
    if max_len is None or len(ids) <= max_len:
        return ids, 0
    return ids[len(ids) - max_len :], len(ids) - max_len


def _cut(ids: list[int], n: int, keep: CotKeep) -> list[int]:
    """Remove ``n`` tokens, keeping the CoT's end, its start, or both ends (cutting the middle)."""
    if n <= 0:
        return ids
    if n >= len(ids):
        return []
    if keep == "end":
        return ids[n:]
    if keep == "start":
        return ids[: len(ids) - n]
    if keep == "both_ends":
        head = (len(ids) - n) // 2
        return ids[:head] + ids[head + n :]
    raise ValueError(f"unknown cot_keep {keep!r}")
