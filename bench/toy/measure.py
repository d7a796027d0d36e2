"""What the toy study reads from one lm-eval run (docs/toy_study.md).

The study evaluates every model with the project's own evaluation (``abscot_plugin.eval_cli``:
lm-eval, the ``abscot-hf`` model class and the tasks' scorer); this module turns what lm-eval
wrote into the study's numbers:

* :func:`summarize` — the task metrics of the results file (accuracy, mean generated tokens, …)
  and, for the abstract decode, :func:`trace_stats` of the traces in the per-sample log.
* :func:`trace_stats` — length, symbol entropy, share of distinct traces, collapse.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

from abscot_plugin.report import find_results, rows_of
from abscot_plugin.scoring import DecodeRecord
from abscot_plugin.traces import parse_trace

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


def records(out_dir: str | Path, task: str) -> list[DecodeRecord]:
    """The decode records of ``task`` in the per-sample log lm-eval wrote under ``out_dir``."""
    found = sorted(Path(out_dir).rglob(f"samples_{task}_*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no samples_{task}_*.jsonl under {out_dir}")
    lines = found[-1].read_text(encoding="utf-8").splitlines()
    return [DecodeRecord.from_json(json.loads(line)["resps"][0][0]) for line in lines if line.strip()]


def summarize(out_dir: str | Path, task: str, num_symbols: int, m_max: int) -> dict[str, float]:
    """The metrics of ``task`` in the newest lm-eval results under ``out_dir`` (``n``,
    ``accuracy``, ``total_tokens``, …), plus :func:`trace_stats` when the task decodes abstractly."""
    (row,) = [r for r in rows_of(find_results(out_dir)[-1]) if r.task == task]
    out = {"n": float(row.n or 0), **{k: v for k, v in row.metrics.items() if v is not None}}
    traces = [r.trace for r in records(out_dir, task) if r.mode == "abstract"]
    if traces:
        out.update(trace_stats(traces, num_symbols, m_max))
    return out
