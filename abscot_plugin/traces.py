"""Abstract traces: the stage-1 sampling settings, round-1 random traces, parsing and validation,
and trace files (JSONL). No torch: the orchestrator reads the settings' defaults and trace files.

A trace is stored as the concatenated symbol names, e.g. ``"<TOKEN_C><TOKEN_AK>"``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .symbols import symbol_names

_SYMBOL = re.compile(r"<TOKEN_[A-Z]{1,2}>")


@dataclass(frozen=True)
class TraceSettings:
    """Stage-1 sampling settings: a trace has ``m_min``..``m_max`` symbols, sampled at
    ``temperature`` (0: greedy) within ``top_p``, each prompt seeded from ``seed``.

    The defaults are the paper's and the reproduction's (docs/method.md) and the one source of
    these defaults: the generate CLI, the run config's ``generation`` section, the lm-eval
    models and training's ``abscot_m_max`` read them (the task YAMLs state them, pinned by
    tests/test_docs.py).
    """

    m_min: int = 16
    m_max: int = 128
    temperature: float = 0.7
    seed: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.m_min < 1:
            raise ValueError(f"m_min must be >= 1, got {self.m_min}")
        if self.m_min > self.m_max:
            raise ValueError(f"m_min {self.m_min} > m_max {self.m_max} (need m_min <= m_max)")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def parse_trace(trace: str, num_symbols: int, m_max: int = TraceSettings.m_max) -> list[str]:
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
    m_max: int = TraceSettings.m_max,
) -> list[str]:
    """Round-1 teacher trace (docs/method.md): for each CoT step ℓ of length |ℓ| (tokens) draw
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


def load_trace_file(path: str | Path, num_symbols: int, m_max: int = TraceSettings.m_max) -> dict[str, str]:
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
