"""Abstract traces: round-1 random traces, parsing and validation, and trace files (JSONL).

A trace is stored as the concatenated symbol names, e.g. ``"<TOKEN_C><TOKEN_AK>"``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from .symbols import symbol_names

_SYMBOL = re.compile(r"<TOKEN_[A-Z]{1,2}>")
DEFAULT_M_MAX = 128


def parse_trace(trace: str, num_symbols: int, m_max: int = DEFAULT_M_MAX) -> list[str]:
    """Split a trace string into symbols; raises ValueError unless it is 1..m_max V_abs symbols."""
    if not isinstance(trace, str):
        raise ValueError(f"trace must be a string, got {type(trace).__name__}")
    symbols = _SYMBOL.findall(trace)
    if "".join(symbols) != trace:
        raise ValueError(f"trace has text that is not an abstract symbol: {trace[:80]!r}")
    allowed = set(symbol_names(num_symbols))
    bad = sorted(set(symbols) - allowed)
    if bad:
        raise ValueError(f"trace uses symbols outside V_abs (M={num_symbols}): {bad[:5]}")
    if not 1 <= len(symbols) <= m_max:
        raise ValueError(f"trace has {len(symbols)} symbols, allowed 1..{m_max}")
    return symbols


def _row_rng(row_id: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{row_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def random_trace(
    step_lengths: list[int],
    row_id: str,
    num_symbols: int,
    seed: int = 0,
    m_max: int = DEFAULT_M_MAX,
) -> list[str]:
    """Round-1 teacher trace (METHOD.md): for each CoT step ℓ of length |ℓ| (tokens) draw
    U{1..max(1, |ℓ|//2)} symbols uniformly from V_abs, at most m_max in all. Seeded per
    (seed, row_id): reproducible and independent of processing order or worker count."""
    names = symbol_names(num_symbols)
    rng = _row_rng(row_id, seed)
    out: list[str] = []
    for length in step_lengths or [1]:
        count = rng.randint(1, max(1, length // 2))
        out.extend(rng.choice(names) for _ in range(count))
        if len(out) >= m_max:
            break
    return out[:m_max]


def load_trace_file(path: str | Path, num_symbols: int, m_max: int = DEFAULT_M_MAX) -> dict[str, str]:
    """Read a trace JSONL (``{"id": ..., "trace": ...}`` per line) into id → trace, validated."""
    traces: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                row_id, trace = str(rec["id"]), rec["trace"]
                parse_trace(trace, num_symbols, m_max)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: bad trace record: {exc}") from None
            if row_id in traces:
                raise ValueError(f"{path}:{lineno}: duplicate id {row_id!r}")
            traces[row_id] = trace
    return traces
