"""What the toy study reads from one lm-eval run (docs/toy_study.md).

The study evaluates every model with the project's own evaluation (``abscot_plugin.eval.eval_cli``:
lm-eval, the ``abscot-hf`` model class and the tasks' scorer); this module turns what lm-eval
wrote into the study's numbers:

* :func:`summarize` — the task metrics of the results file (accuracy, mean generated tokens, …)
  and, for the abstract decode, :func:`trace_stats` of the traces in the per-sample log.
* :func:`trace_stats` — length, symbol entropy, share of distinct traces, collapse.

* :func:`oracle_agreement` — for a model trained on the ideal traces (one symbol per state):
  how many of its trace symbols name the right state, and how often its answer is the state its
  last symbol names (does the answer read the trace?).

``distinct_answers`` counts the different final boxed answers a model gives over the test
problems (a missing answer is not one): a model that ignores its trace (or its input) answers
the same arrangement to every problem.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

from abscot_plugin.core.symbols import symbol_names
from abscot_plugin.core.traces import parse_trace
from abscot_plugin.eval.report import find_results, rows_of
from abscot_plugin.eval.scoring import DecodeRecord, last_boxed
from abscot_plugin.testing.toy import STATES, Problem

COLLAPSE_SHARE = 0.1  # fewer distinct traces than this share of the problems: collapsed


def entropy_bits(counts: Counter) -> float:
    """Shannon entropy (bits) of a frequency table, e.g. ``Counter("aabb")`` -> 1.0."""
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values() if n) if total else 0.0


def trace_stats(traces: list[str], num_symbols: int, m_max: int) -> dict[str, float]:
    """Statistics of traces (concatenated symbol names, e.g. ``"<TOKEN_A><TOKEN_Q>"``): mean and
    sd of the length, entropy of the symbol frequencies (bits; 6 for uniform use of 64 symbols),
    share of distinct traces, and ``collapsed`` (1.0 when fewer than :data:`COLLAPSE_SHARE` of
    them are distinct). Raises ValueError on an empty list."""
    if not traces:
        raise ValueError("no traces to describe")
    symbols = [parse_trace(t, num_symbols, m_max) for t in traces]
    lengths = [len(s) for s in symbols]
    distinct = len(set(traces)) / len(traces)
    return {
        "trace_len": statistics.fmean(lengths),
        "trace_len_sd": statistics.pstdev(lengths),
        "symbol_entropy": entropy_bits(Counter(sym for s in symbols for sym in s)),
        "distinct": distinct,
        "collapsed": float(distinct < COLLAPSE_SHARE),
    }


def samples(out_dir: str | Path, task: str) -> list[tuple[dict, DecodeRecord]]:
    """(doc, decode record) of each sample of ``task`` in the per-sample log lm-eval wrote under
    ``out_dir``."""
    found = sorted(Path(out_dir).rglob(f"samples_{task}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no samples_{task}_*.jsonl under {out_dir}")
    lines = found[-1].read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    return [(e["doc"], DecodeRecord.from_json(e["resps"][0][0])) for e in entries]


def summarize(out_dir: str | Path, task: str, num_symbols: int, m_max: int, oracle: bool = False) -> dict[str, float]:
    """The metrics of ``task`` in the newest lm-eval results under ``out_dir`` (``n``,
    ``accuracy``, ``total_tokens``, …, ``distinct_answers``), plus :func:`trace_stats` when the
    task decodes abstractly, and :func:`oracle_agreement` when ``oracle``."""
    (row,) = [r for r in rows_of(find_results(out_dir)[-1]) if r.task == task]
    out = {"n": float(row.n or 0), **{k: v for k, v in row.metrics.items() if v is not None}}
    docs, decoded = zip(*samples(out_dir, task), strict=True)
    out["distinct_answers"] = float(len({last_boxed(r.answer) for r in decoded} - {None}))
    traces = [r.trace for r in decoded if r.mode == "abstract"]
    if traces:
        out.update(trace_stats(traces, num_symbols, m_max))
    if oracle:
        out.update(oracle_agreement([d["problem"] for d in docs], list(decoded), num_symbols, m_max))
    return out


def oracle_agreement(
    problems: list[str], decoded: list[DecodeRecord], num_symbols: int, m_max: int
) -> dict[str, float]:
    """Against the ideal trace (:meth:`abscot_plugin.testing.toy.Problem.oracle_trace`: symbol i names
    ``STATES[i]``): ``oracle_symbols_right`` = mean share of trace positions whose symbol names the
    true state after that swap; ``answer_reads_trace`` = share of answers equal to the state the
    trace's last symbol names. Example: for ``a13 b24`` the ideal trace is ``<TOKEN_O><TOKEN_Q>``
    (3214, 3412); a trace ``<TOKEN_O><TOKEN_A>`` followed by ``\\boxed{1234}`` scores 0.5 and 1."""
    names = symbol_names(num_symbols)[: len(STATES)]  # the symbols that name a state
    right, reads = [], []
    for text, record in zip(problems, decoded, strict=True):
        symbols = parse_trace(record.trace, num_symbols, m_max)
        expected = parse_trace(Problem.from_text(text).oracle_trace(), num_symbols, m_max)
        right.append(sum(a == b for a, b in zip(symbols, expected, strict=False)) / len(expected))
        last = names.index(symbols[-1]) if symbols and symbols[-1] in names else None
        reads.append(last is not None and last_boxed(record.answer) == STATES[last])
    return {"oracle_symbols_right": statistics.fmean(right), "answer_reads_trace": statistics.fmean(reads)}
