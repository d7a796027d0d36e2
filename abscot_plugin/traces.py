"""Abstract traces: the stage-1 sampling settings, round-1 random traces, parsing and validation,
and the trace-file format (its writer and readers). No torch: the orchestrator reads the
settings' defaults and the trace files too.

A trace is stored as the concatenated symbol names, e.g. ``"<TOKEN_C><TOKEN_AK>"``. A trace file is
JSONL, one record per row in the rows' order (:func:`trace_record`)::

    {"id": "dolci-7", "trace": "<TOKEN_C><TOKEN_AK>", "length": 2, "prefix_tokens": 812, "cot_cut": 0}

``id`` and ``trace`` are what training reads (:func:`load_trace_file`); ``length`` (symbols),
``prefix_tokens`` (the teacher's prompt) and ``cot_cut`` (CoT tokens cut from that prompt) describe
the generation. ``OUT.meta.json`` beside it records the settings and the run's counts
(:class:`TraceWriter`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import write_atomic
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


# -- trace files --------------------------------------------------------------------------------
def trace_record(
    row_id: str, trace: str, num_symbols: int, settings: TraceSettings, prefix_tokens: int, cot_cut: int
) -> dict[str, Any]:
    """One line of a trace file (module docstring), the trace validated as training will read it
    (ValueError) and against ``settings.m_min`` (RuntimeError naming the row)."""
    symbols = parse_trace(trace, num_symbols, settings.m_max)
    if len(symbols) < settings.m_min:
        raise RuntimeError(f"row {row_id}: trace of {len(symbols)} symbols is shorter than m_min={settings.m_min}")
    return {"id": row_id, "trace": trace, "length": len(symbols), "prefix_tokens": prefix_tokens, "cot_cut": cot_cut}


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a trace file (or of one of its parts), in file order, unvalidated."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def meta_path(out: str | Path) -> Path:
    """``OUT.meta.json``, written beside a finished trace file: its settings and the run's counts."""
    return Path(out).with_name(Path(out).name + ".meta.json")


def read_meta(out: str | Path) -> dict[str, Any]:
    """The ``{"settings": …, "summary": …}`` recorded beside the finished trace file ``out``."""
    return json.loads(meta_path(out).read_text(encoding="utf-8"))


class TraceWriter:
    """Chunked, resumable writing of the trace file ``out``: ``OUT.parts/part-*.jsonl`` (and the
    settings they were made with) while running, ``OUT`` and ``OUT.meta.json`` at the end, each
    file written atomically. Resuming with other settings is refused."""

    def __init__(self, out: str | Path, settings_record: dict[str, Any]):
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.meta = meta_path(self.out)
        self.settings_record = settings_record

    def _check_settings(self, where: Path) -> None:
        if not where.exists():
            return
        recorded = json.loads(where.read_text(encoding="utf-8")).get("settings") or {}
        if recorded != self.settings_record:
            changed = sorted(
                k for k in set(recorded) | set(self.settings_record) if recorded.get(k) != self.settings_record.get(k)
            )
            raise ValueError(
                f"{self.out}: earlier output was made with different settings ({', '.join(changed)}); "
                f"remove {self.out}, {self.meta} and {self.parts} to regenerate"
            )

    def finished(self) -> dict[str, dict[str, Any]]:
        """Records already written (final file and parts), by id; validates the settings match."""
        self._check_settings(self.meta)
        self._check_settings(self.parts / "settings.json")
        files = ([self.out] if self.out.exists() else []) + sorted(self.parts.glob("part-*.jsonl"))
        return {str(rec["id"]): rec for path in files for rec in read_records(path)}

    def write_part(self, records: list[dict[str, Any]]) -> None:
        """Save one chunk."""
        if not self.parts.exists():
            self.parts.mkdir(parents=True)
            write_atomic(self.parts / "settings.json", json.dumps({"settings": self.settings_record}))
        index = len(list(self.parts.glob("part-*.jsonl")))
        write_atomic(self.parts / f"part-{index:06d}.jsonl", _jsonl(records))

    def finish(self, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Write ``OUT`` (``records`` in input order) and its meta file, then drop the parts."""
        write_atomic(self.out, _jsonl(records))
        write_atomic(self.meta, json.dumps({"settings": self.settings_record, "summary": summary}, indent=1))
        shutil.rmtree(self.parts, ignore_errors=True)


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
