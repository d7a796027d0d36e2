"""Token-level layout of Abstract-CoT sequences, shared by training, trace generation and eval.

Phase A (bottleneck):    x  c  <beginabstract> z <endabstract>  \\n y <|im_end|>
Phase B (self-distill):  x     <beginabstract> z <endabstract>  \\n y <|im_end|>

Labels cover z, ``<endabstract>`` and ``\\n y <|im_end|>``; never x, c or ``<beginabstract>``
(which the decoder is given). Prefixes for generation are built here too, from the same pieces,
so a training prompt and a decode prompt are the same ids.

Fitting ``sequence_len`` (a :class:`~abscot_plugin.args.RowLayout`: ``sequence_len``, ``m_max``,
``cot_keep``): only the CoT c is ever cut (``cot_keep``); x, z and y never are. A Phase A row is
laid out before its trace is known (the teacher that writes z decodes from this very prefix), so
it reserves room for the longest trace: c gets ``sequence_len - |x| - |y| - (m_max + 2)`` tokens
(2: the delimiters) whatever |z| turns out to be. That costs at most m_max + 2 CoT tokens (130 of
8192 at the defaults). Example, ``RowLayout(sequence_len=20, m_max=4, cot_keep="end")`` (reserve
6), |x| 5, |y| 3, |c| 10: c keeps 20 - 5 - 3 - 6 = 6 tokens (4 cut); the generation prefix is
x c[4:] <beginabstract> (12 ids), and with a 2-symbol trace the training row is those 12 ids +
z <endabstract> + y = 18 ids. Phase B rows have no c: x + z + y must fit.

Text is tokenised by :mod:`abscot_plugin.tokens.tokenization`: the CoT c and answer y are plain text, and
x keeps only the chat template's own structure tokens, so text that spells ``<think>``,
``<|im_end|>`` or an abstract token never yields that token's id.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..args import RowLayout
from ..core.choices import CotKeep, Phase
from ..core.prompts import END_OF_TURN, math_messages
from ..core.rows import BadRowError, ReasoningRow, cot_steps, cot_text
from ..core.traces import random_trace
from . import segments as seg
from . import tokenization
from .vocab import AbstractVocab

IGNORE = -100


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
        eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if eot is None or eot == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {END_OF_TURN} token (a Qwen3-style chat tokenizer is needed)")
        self.end_of_turn = eot

    def _text_ids(self, text: str) -> list[int]:
        """Ids of free text, as plain text (:func:`~abscot_plugin.tokens.tokenization.text_ids`)."""
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
    def phase_a_prefix(self, row: ReasoningRow, layout: RowLayout) -> tuple[list[int], int]:
        """x c <beginabstract>: exactly the ids that :meth:`example` puts before z for the same
        ``layout``; returns them and how many CoT tokens were cut. Raises :class:`BadRowError`
        (``too_long``) for a row that training would reject."""
        x, c, _, cut = self._phase_a_head(row, layout)
        return x + c + [self.vocab.begin_id], cut

    def phase_b_prefix(self, row: ReasoningRow) -> list[int]:
        """x <beginabstract> (never cut: a prompt too long for its budget is the caller's error)."""
        return self.prompt_ids(row) + [self.vocab.begin_id]

    def problem_prefix(self, problem: str, row_id: str = "<prompt>") -> list[int]:
        """x <beginabstract> for a math problem: the evaluation prompt (:func:`.prompts.math_messages`),
        which RL rollouts use too; ``row_id`` names the problem in errors."""
        return self.phase_b_prefix(ReasoningRow(row_id, math_messages(problem), "", ""))

    def answer_prefix_suffix(self, trace_ids: list[int]) -> list[int]:
        """What follows x <beginabstract> before the answer: z <endabstract> \\n."""
        return list(trace_ids) + [self.vocab.end_id] + self.newline_ids

    # -- training examples ---------------------------------------------------------------
    def _answer_ids(self, row: ReasoningRow) -> list[int]:
        """\\n y <|im_end|>: what follows ``<endabstract>``."""
        return self.newline_ids + self._text_ids(row.answer) + [self.end_of_turn]

    def _phase_a_head(self, row: ReasoningRow, layout: RowLayout) -> tuple[list[int], list[int], list[int], int]:
        """(x, c cut to its room, y, CoT tokens cut) of a Phase A row: the one place that decides
        what a Phase A row keeps, read by :meth:`example` and :meth:`phase_a_prefix` alike."""
        x, c, y = self.prompt_ids(row), self.cot_ids(row), self._answer_ids(row)
        room = layout.sequence_len - len(x) - len(y) - (layout.m_max + 2)
        if room < 1:
            raise BadRowError(
                row.row_id,
                "too_long",
                f"prompt ({len(x)}) + answer ({len(y)}) + room for a {layout.m_max}-symbol trace (+2 delimiters) "
                f"leave no room for the CoT within sequence_len={layout.sequence_len}",
            )
        cut = max(0, len(c) - room)
        return x, _cut(c, cut, layout.cot_keep), y, cut

    def example(self, row: ReasoningRow, trace_ids: list[int], phase: Phase, layout: RowLayout) -> Example:
        """Build one training example of ``phase`` within ``layout``. Phase A: c is cut to the room
        that a trace of ``layout.m_max`` symbols leaves (module docstring); Phase B: x + z + y must
        fit. A trace of more than ``layout.m_max`` symbols is a bad row in both."""
        if len(trace_ids) > layout.m_max:
            raise BadRowError(
                row.row_id, "bad_trace", f"trace of {len(trace_ids)} symbols exceeds m_max={layout.m_max}"
            )
        z = [self.vocab.begin_id] + list(trace_ids) + [self.vocab.end_id]
        if phase.has_cot:
            x, c, y, cut = self._phase_a_head(row, layout)
        else:
            x, c, y, cut = self.prompt_ids(row), [], self._answer_ids(row), 0
            if len(x) + len(z) + len(y) > layout.sequence_len:
                raise BadRowError(
                    row.row_id,
                    "too_long",
                    f"prompt + trace + answer take {len(x) + len(z) + len(y)} tokens, "
                    f"more than sequence_len={layout.sequence_len}",
                )
        ids = x + c + z + y
        labels = [IGNORE] * (len(x) + len(c) + 1) + z[1:] + y
        segments = [seg.PROMPT] * len(x) + [seg.COT] * len(c) + [seg.ABSTRACT] * len(z) + [seg.ANSWER] * len(y)
        return Example(ids, labels, segments, cut)

    def split_examples(self, row: ReasoningRow, trace_ids: list[int], layout: RowLayout) -> tuple[Example, Example]:
        """Phase A as the two-pass split ``abscot_phase_a_layout: split`` trains (an ablation, not the
        method): the one-pass :meth:`example` cut into two rows, every token labelled once as there.
        Pass 2 computes z without c, so nothing of c can reach y. With a 2-token prompt, a 2-token
        CoT, one symbol ``A`` and the answer ``7`` (``-`` = no label):

            one pass  x1 x2 c1 c2 <ba> A <ea> \\n 7 <e>   labels - - - - - A <ea> \\n 7 <e>
            pass 1    x1 x2 c1 c2 <ba> A <ea>          labels - - - - - A <ea>
            pass 2    x1 x2 <ba> A <ea> \\n 7 <e>         labels - - - - - \\n 7 <e>

        Pass 1 is cut exactly as the one-pass row (same generation prefix); pass 2 is never cut."""
        one = self.example(row, trace_ids, Phase.A, layout)
        answer_at = one.segment_ids.index(seg.ANSWER)
        first = Example(one.input_ids[:answer_at], one.labels[:answer_at], one.segment_ids[:answer_at], one.cot_cut)
        keep = [i for i, s in enumerate(one.segment_ids) if s != seg.COT]
        ids = [one.input_ids[i] for i in keep]
        segments = [one.segment_ids[i] for i in keep]
        labels = [one.labels[i] if s == seg.ANSWER else IGNORE for i, s in zip(keep, segments, strict=True)]
        return first, Example(ids, labels, segments, 0)


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
