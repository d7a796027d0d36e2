"""Answer scoring for the evaluation tasks: the final ``\\boxed{}`` answer, math-verify
equivalence with the gold answer, and the per-sample metrics of a decode record.

A model answer is scored by its *last* boxed answer (``\\boxed{…}``, ``\\boxed …``, ``\\fbox{…}``);
boxes written back to back in the final statement ("$x=\\boxed{2}$ or $x=\\boxed{3}$") count as
one multi-valued answer. The extracted string and the gold answer are parsed by math-verify and
compared with ``verify(gold, prediction)`` (gold first: the order matters for sets/intervals).
An answer without a box, or whose box math-verify cannot parse into a mathematical object,
scores 0 and is counted as unparseable.

Units: math-verify drops a unit written after a number (``4\\text{ cm}`` reads as 4) but reads a
number written *inside* the text group (``\\text{4 cm}``) as text, which would score a right answer
0. Before parsing, every text group (``\\text``, ``\\textrm``, ``\\textbf``, ``\\textnormal``,
``\\mbox``, ``\\mathrm``) that holds a number (optionally ``\\$``, a sign, thousands commas, a
decimal part) followed only by unit words (letters, spaces, ``.``, ``/``, ``'``, ``°`` and powers
such as ``^2``) is rewritten as the number followed by ``\\text{ <unit>}``, on gold and answer alike:
``\\text{4 cm}`` and ``\\text{4 cm}^2`` compare as 4, ``\\text{\\$18.90}`` as 18.90, and
``x = \\text{6 cm}`` as ``x = 6``. Text without a leading number (``\\text{Monday}``,
``\\text{(B)}``) or with another number after the words (``\\text{2 and 3}``) is left as it is and
compares as text.

The model classes (``lm_eval_models``) hand lm-eval one :class:`DecodeRecord` per sample, as JSON;
:func:`scored_entry` adds the score (the per-sample log entry) and :func:`sample_metrics` turns
an entry into the task metrics.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from math_verify import parse, verify

# how a problem is decoded: two-stage (trace, then answer) or the verbal answer alone
DecodeMode = Literal["abstract", "verbal"]
DECODE_MODES: tuple[DecodeMode, ...] = get_args(DecodeMode)

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*")
# Text allowed between boxes of one multi-valued answer: math delimiters, punctuation, "and"/"or",
# and an assignment such as "x =" or "$x=$".
_BOX_JOINER = re.compile(
    r"^(?:[\s$.,;:]|\\quad|\\qquad|\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b|"
    r"[A-Za-z](?:_\{?\w+\}?)?\s*=)*$"
)
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
# A number followed only by unit words inside one text group: ``\text{4 cm}``, ``\mbox{\$18.90}``.
_NUMBER_IN_TEXT = re.compile(
    r"\\(?:text|textrm|textbf|textnormal|mbox|mathrm)\s*\{\s*"
    r"(?P<number>(?:\\\$\s*)?[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)"
    r"\s*(?P<unit>(?:[A-Za-z\u00b0'./\s]|\^\{?\d+\}?)*?)\s*\}"
)


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """All boxed answers in ``text`` as (start, end, content), brace-matched, in order."""
    found = []
    pos = 0
    while (match := _BOX_START.search(text, pos)) is not None:
        start, i = match.start(), match.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{" and text[j - 1] != "\\":
                    depth += 1
                elif text[j] == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth != 0:  # unclosed box: nothing after it can be a complete answer
                break
            found.append((start, j + 1, text[i + 1 : j].strip()))
            pos = j + 1
        else:  # "\boxed 5": the argument runs to the next space or "$"
            arg = re.match(r"[^\s$]+", text[i:])
            if arg is None:
                pos = i
                continue
            found.append((start, i + arg.end(), arg.group(0).rstrip(".,;")))
            pos = i + arg.end()
    return found


def last_boxed(text: str) -> str | None:
    """The final boxed answer of ``text`` (None if there is none or it is empty).

    Boxes joined only by punctuation, ``and``/``or`` or an assignment (``x = ``) form one answer,
    returned comma-separated: ``\\boxed{2} and \\boxed{3}`` gives ``"2, 3"`` (a repeated box
    counts once).
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if not _BOX_JOINER.match(text[prev[1] : group[0][0]]):
            break
        group.insert(0, prev)
    contents = list(dict.fromkeys(content for _, _, content in group if content))
    return ", ".join(contents) if contents else None


def gsm8k_gold(answer: str) -> str:
    """The final number of a GSM8K solution (``… #### 1,234`` gives ``"1234"``)."""
    match = _GSM8K_FINAL.search(answer)
    if match is None:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    return match.group(1).replace(",", "").strip()


def _units_outside_text(text: str) -> str:
    """``\\text{4 cm}`` -> ``4\\text{ cm}`` (the form math-verify reads as 4); see the module doc."""

    def rewrite(match: re.Match) -> str:
        number, unit = match.group("number"), match.group("unit")
        return f"{number}\\text{{ {unit}}}" if unit else number

    return _NUMBER_IN_TEXT.sub(rewrite, text)


def _parse_math(text: str) -> list:
    return parse(f"${_units_outside_text(text)}$")


def parse_gold(gold: str) -> list:
    """math-verify's reading of a gold answer; raises ValueError if it reads nothing."""
    parsed = _parse_math(gold)
    if not parsed:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
    return parsed


def reads_math(parsed: list) -> bool:
    """Whether a math-verify parse holds a mathematical object (not only the raw string it keeps)."""
    return any(not isinstance(item, str) for item in parsed)


def is_equivalent(gold: str, prediction: str) -> bool:
    """Whether ``prediction`` is mathematically equivalent to ``gold`` (both LaTeX answer strings)."""
    gold_parsed = parse_gold(gold)
    pred_parsed = _parse_math(prediction)
    return bool(pred_parsed) and verify(gold_parsed, pred_parsed)


@dataclass(frozen=True)
class Score:
    """One scored answer: the extracted final answer, whether it parsed, whether it is right."""

    extracted: str | None
    parsed: bool
    correct: bool


def score_answer(response: str, gold: str) -> Score:
    """Score a model's answer text against the gold answer by its last boxed answer.

    ``parsed`` is False when there is no box or math-verify reads no mathematical object from
    it (it then keeps only the raw string); such an answer scores 0 unless that string equals
    the gold string.
    """
    extracted = last_boxed(response)
    if extracted is None:
        return Score(None, False, False)
    correct = is_equivalent(gold, extracted)
    return Score(extracted, reads_math(_parse_math(extracted)) or correct, correct)


@dataclass(frozen=True)
class DecodeRecord:
    """What a model class returns for one sample (as JSON, the response string lm-eval logs).

    ``trace``: the abstract trace as concatenated symbol names ("" in verbal mode);
    ``abstract_tokens``: its number of symbols (delimiters not counted); ``hit_m_max``: the trace
    was cut at m_max (``<endabstract>`` forced); ``answer``: the stage-2 text, decoded from the
    answer ids alone; ``answer_tokens``: generated answer ids, stop token excluded;
    ``answer_truncated``: the answer used the whole token budget without stopping.
    """

    mode: DecodeMode
    trace: str
    abstract_tokens: int
    hit_m_max: bool
    answer: str
    answer_tokens: int
    answer_truncated: bool

    @property
    def total_tokens(self) -> int:
        """Generated tokens as the paper counts them: abstract + answer."""
        return self.abstract_tokens + self.answer_tokens

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DecodeRecord:
        """Parse a response string; raises a one-line error if it is not one of our records."""
        try:
            fields = json.loads(text)
            record = cls(**fields)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(
                "response is not an abscot decode record (evaluate these tasks with "
                f"--model abscot-hf or abscot-vllm): {exc}; got {text[:80]!r}"
            ) from None
        if record.mode not in DECODE_MODES:
            raise ValueError(f"decode record has unknown mode {record.mode!r}")
        return record


def scored_entry(record: DecodeRecord, gold: str) -> dict[str, Any]:
    """The per-sample log entry: the record's fields, total tokens, gold, extracted answer, score."""
    score = score_answer(record.answer, gold)
    return {
        **asdict(record),
        "total_tokens": record.total_tokens,
        "gold": gold,
        "extracted_answer": score.extracted,
        "parsed": score.parsed,
        "correct": score.correct,
    }


def sample_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """Per-sample metric values of a :func:`scored_entry` (trace metrics in abstract mode only)."""
    metrics = {
        "accuracy": float(entry["correct"]),
        "unparseable": float(not entry["parsed"]),
        "answer_tokens": float(entry["answer_tokens"]),
        "total_tokens": float(entry["total_tokens"]),
        "answer_truncated": float(entry["answer_truncated"]),
    }
    if entry["mode"] == "abstract":
        metrics["abstract_tokens"] = float(entry["abstract_tokens"])
        metrics["hit_m_max"] = float(entry["hit_m_max"])
    return metrics
