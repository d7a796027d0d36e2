"""Answer scoring (abscot_plugin.eval.scoring): boxed-answer extraction and math-verify equivalence on
MATH-style answer formats, GSM8K gold answers, decode records and per-sample metrics."""

from __future__ import annotations

import json

import pytest

from abscot_plugin.eval.scoring import (
    DecodeRecord,
    gsm8k_gold,
    is_equivalent,
    last_boxed,
    sample_metrics,
    score_answer,
    scored_entry,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is $\\boxed{15}$.", "15"),
        ("$\\boxed{\\dfrac{7}{8}}$", "\\dfrac{7}{8}"),
        ("nested $\\boxed{\\frac{\\sqrt{3}}{2}}$ done", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{5}, then after checking, the final answer is \\boxed{7}", "7"),
        ("set braces \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("no space form: \\boxed 5.", "5"),
        ("\\fbox{42}", "42"),
        ("$x = \\boxed{2}$ or $x = \\boxed{3}$", "2, 3"),
        ("The solutions are \\boxed{-3} and \\boxed{3}.", "-3, 3"),
        ("\\boxed{5}\n\n\\boxed{5}", "5"),  # a repeated box counts once
        ("no box here: 12", None),
        ("\\boxed{}", None),
        ("unclosed \\boxed{3", None),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


# (gold as in MATH-500's answer field, model's boxed answer, equivalent?)
EQUIVALENCE = [
    ("15", "15", True),
    ("\\frac{7}{8}", "\\dfrac{7}{8}", True),
    ("\\frac{7}{8}", "0.875", True),
    ("\\frac{7}{8}", "\\tfrac78", True),
    ("-\\frac{2}{3}", "\\frac{-2}{3}", True),
    ("5\\sqrt{2}", "\\sqrt{50}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
    ("2.5", "\\frac{5}{2}", True),
    ("120^\\circ", "120", True),  # degrees
    ("120^\\circ", "120^{\\circ}", True),
    ("90^\\circ", "100^\\circ", False),
    ("10", "10\\text{ cm}", True),  # units
    ("6", "6 \\text{ inches}", True),
    ("\\$18.90", "18.90", True),  # currency
    ("1,000", "1000", True),
    ("1000000", "1{,}000{,}000", True),
    ("50\\%", "0.5", True),
    ("\\text{Monday}", "\\text{Monday}", True),  # text answers
    ("\\text{Monday}", "\\text{Tuesday}", False),
    ("\\text{(C)}", "C", True),
    ("\\text{(C)}", "\\text{(B)}", False),
    ("(2,3)", "(2, 3)", True),  # intervals: open/closed ends matter
    ("(2,3)", "[2,3]", False),
    ("[-2,5)", "[-2, 5)", True),
    ("[-2,5)", "(-2,5)", False),
    ("(-\\infty, 0]", "(-\\infty,0]", True),
    ("(-\\infty,-2)\\cup(3,\\infty)", "(-\\infty, -2) \\cup (3, \\infty)", True),
    ("-3, 3", "3, -3", True),  # several answers, any order
    ("-3, 3", "3", False),
    ("1, 2, 4", "\\{1,2,4\\}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),  # coordinates (ordered)
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2}, 3)", False),
    ("x^2+7x+10", "(x+2)(x+5)", True),
    ("6", "x = 6", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    ("\\pi", "3.14159", False),
    ("3", "4", False),
]


@pytest.mark.parametrize(("gold", "pred", "equal"), EQUIVALENCE)
def test_is_equivalent_on_math_formats(gold, pred, equal):
    assert is_equivalent(gold, pred) is equal


# A number with its unit inside one text group: the number is compared (the unit is dropped, as
# math-verify already does for `4\\text{ cm}`); other text answers compare as text.
UNITS_IN_TEXT = [
    ("4", "\\text{4 cm}", True),
    ("4", "\\text{4 cm}^2", True),  # the power belongs to the unit
    ("4", "\\text{4 cm^2}", True),
    ("5", "\\text{4 cm}", False),
    ("4", "4\\text{ cm}", True),  # already read by math-verify
    ("30", "\\text{30 degrees}", True),
    ("30^\\circ", "\\text{30 degrees}", True),
    ("1000", "\\text{1,000 dollars}", True),
    ("18.90", "\\text{\\$18.90}", True),
    ("18.90", "\\text{\\$18.90 dollars}", True),
    ("4", "\\mbox{4 cm}", True),
    ("4", "\\textrm{4 square units}", True),
    ("60", "\\text{60 km/h}", True),
    ("-3", "\\text{-3 degrees}", True),
    ("2.5", "\\text{2.5 hours}", True),
    ("6", "x = \\text{6 cm}", True),  # ends with the text group
    ("4\\text{ cm}", "\\text{4 cm}", True),  # both sides read the same way
    ("\\text{Monday}", "\\text{Monday}", True),  # text answers stay text
    ("\\text{Monday}", "\\text{Tuesday}", False),
    ("\\text{(B)}", "\\text{(B)}", True),
    ("\\text{(B)}", "\\text{(C)}", False),
    ("2", "\\text{2 and 3}", False),  # words followed by another number are not a unit
    ("3", "\\text{3}", True),
]


@pytest.mark.parametrize(("gold", "pred", "equal"), UNITS_IN_TEXT)
def test_number_with_unit_inside_text(gold, pred, equal):
    assert is_equivalent(gold, pred) is equal
    assert score_answer(f"so the answer is $\\boxed{{{pred}}}$.", gold).correct is equal


def test_is_equivalent_rejects_unparseable_gold():
    with pytest.raises(ValueError, match="gold answer"):
        is_equivalent("", "3")


def test_score_answer_uses_last_box_only():
    text = "Try $\\boxed{3}$? No: recomputing, $\\frac{6\\cdot5}{2} = \\boxed{15}$."
    assert score_answer(text, "15").correct
    assert not score_answer("first \\boxed{15}, finally \\boxed{16}", "15").correct
    # the last number of an unboxed answer is not taken
    unboxed = score_answer("The answer is 15.", "15")
    assert (unboxed.extracted, unboxed.parsed, unboxed.correct) == (None, False, False)


def test_score_answer_multi_box_answer():
    assert score_answer("so $x=\\boxed{3}$ or $x=\\boxed{-3}$", "-3, 3").correct


def test_score_answer_counts_unparseable_boxes():
    # a box math-verify cannot read is unparseable (0 and counted), not silently wrong
    score = score_answer("\\boxed{\\frac{}{}}", "1")
    assert score.extracted is not None and not score.parsed and not score.correct


@pytest.mark.parametrize(
    ("answer", "gold"),
    [("She has 4 + 3 = <<4+3=7>>7 apples.\n#### 7", "7"), ("#### 1,680", "1680"), ("x\n####  -8 ", "-8")],
)
def test_gsm8k_gold(answer, gold):
    assert gsm8k_gold(answer) == gold


def test_gsm8k_gold_requires_final_line():
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("The answer is 7.")


def _record(**overrides) -> DecodeRecord:
    fields = dict(
        mode="abstract",
        trace="<TOKEN_A><TOKEN_B>",
        abstract_tokens=2,
        hit_m_max=False,
        answer="So the total is $\\boxed{\\dfrac{7}{8}}$.",
        answer_tokens=11,
        answer_truncated=False,
    )
    return DecodeRecord(**{**fields, **overrides})


def test_decode_record_json_roundtrip():
    record = _record()
    assert DecodeRecord.from_json(record.to_json()) == record
    assert record.total_tokens == 13


@pytest.mark.parametrize(
    ("text", "message"),
    [("The answer is 7", "not an abscot decode record"), ('{"mode": "abstract"}', "not an abscot decode record")],
)
def test_decode_record_rejects_foreign_responses(text, message):
    with pytest.raises(ValueError, match=message):
        DecodeRecord.from_json(text)


def test_decode_record_rejects_unknown_mode():
    bad = json.loads(_record().to_json()) | {"mode": "latent"}
    with pytest.raises(ValueError, match="unknown mode"):
        DecodeRecord.from_json(json.dumps(bad))


def test_scored_entry_and_metrics_abstract():
    entry = scored_entry(_record(), "\\frac{7}{8}")
    assert entry["extracted_answer"] == "\\dfrac{7}{8}" and entry["correct"] and entry["parsed"]
    assert entry["trace"] == "<TOKEN_A><TOKEN_B>" and entry["total_tokens"] == 13
    assert sample_metrics(entry) == {
        "accuracy": 1.0,
        "unparseable": 0.0,
        "answer_tokens": 11.0,
        "total_tokens": 13.0,
        "answer_truncated": 0.0,
        "abstract_tokens": 2.0,
        "hit_m_max": 0.0,
    }


def test_scored_entry_and_metrics_verbal():
    record = _record(mode="verbal", trace="", abstract_tokens=0, answer="no box", answer_truncated=True)
    metrics = sample_metrics(scored_entry(record, "3"))
    assert metrics == {
        "accuracy": 0.0,
        "unparseable": 1.0,
        "answer_tokens": 11.0,
        "total_tokens": 11.0,
        "answer_truncated": 1.0,
    }
