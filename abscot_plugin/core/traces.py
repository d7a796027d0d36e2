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
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import atomic_path, write_atomic
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


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a trace file, in file order, unvalidated."""
    with open(path, encoding="utf-8") as fh:
        yield from (json.loads(line) for line in fh if line.strip())


def meta_path(out: str | Path) -> Path:
    """``OUT.meta.json``, written beside a finished trace file: its settings and the run's counts."""
    return Path(out).with_name(Path(out).name + ".meta.json")


def read_meta(out: str | Path) -> dict[str, Any]:
    """The ``{"settings": …, "summary": …}`` recorded beside the finished trace file ``out``."""
    return json.loads(meta_path(out).read_text(encoding="utf-8"))


class TraceWriter:
    """Chunked, crash-safe writing of the trace file ``out``.

    Rows are cut into fixed chunks by their index in the data: chunk ``k`` holds rows
    ``k*chunk_size .. (k+1)*chunk_size - 1``, whatever the number of workers. While running,
    each finished chunk is one file ``OUT.parts/part-<k>.json`` (``{"counts": {...}, "records":
    [...]}``, written atomically, so a chunk is saved whole or not at all), beside
    ``OUT.parts/settings.json`` (the settings and the chunk size). :meth:`merge` streams the
    chunks in row order into ``OUT`` and writes ``OUT.meta.json``, each atomically, then drops
    the parts. Resuming with other settings is refused; a resumed run keeps the chunk size its
    parts were cut with. Example (chunk size 4, 10 rows, two workers)::

        OUT.parts/part-0000000.json   rows 0-3   (worker 0)
        OUT.parts/part-0000001.json   rows 4-7   (worker 1)
        OUT.parts/part-0000002.json   rows 8-9   (worker 0)      -> merge -> OUT, OUT.meta.json
    """

    def __init__(self, out: str | Path, settings_record: dict[str, Any], chunk_size: int):
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.meta = meta_path(self.out)
        self.settings_record = settings_record
        self._check_settings(self.meta)
        layout = self.parts / "settings.json"
        self._check_settings(layout)
        self.chunk_size = chunk_size
        if layout.exists():  # a resumed run keeps the chunks its parts were cut into
            self.chunk_size = json.loads(layout.read_text(encoding="utf-8")).get("chunk_size", chunk_size)

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

    def finished_summary(self) -> dict[str, Any] | None:
        """The recorded summary when ``OUT`` is complete (its meta file written), else None."""
        return json.loads(self.meta.read_text(encoding="utf-8"))["summary"] if self.meta.exists() else None

    def start(self) -> None:
        """Record the settings and chunk size beside the parts (before any worker writes one)."""
        if not (self.parts / "settings.json").exists():
            record = {"settings": self.settings_record, "chunk_size": self.chunk_size}
            write_atomic(self.parts / "settings.json", json.dumps(record))

    def _part(self, chunk: int) -> Path:
        return self.parts / f"part-{chunk:07d}.json"

    def done_chunks(self) -> set[int]:
        """The chunks saved so far."""
        return {int(p.stem.removeprefix("part-")) for p in self.parts.glob("part-*.json")}

    def write_chunk(self, chunk: int, records: list[dict[str, Any]], counts: dict[str, Any]) -> None:
        """Save chunk ``chunk``: its records in row order and its counts, in one atomic file."""
        write_atomic(self._part(chunk), json.dumps({"counts": counts, "records": records}))

    def merge(self, num_chunks: int) -> list[dict[str, Any]]:
        """Stream chunks ``0 .. num_chunks-1`` in order into ``OUT`` (atomically, one chunk in
        memory at a time); returns each chunk's counts. ValueError names missing chunks or a row
        id twice (then ``OUT`` is not written). Call :meth:`finish` after it."""
        missing = sorted(set(range(num_chunks)) - self.done_chunks())
        if missing:
            raise ValueError(f"{self.parts}: chunks {missing[:10]} of {num_chunks} are not finished")
        seen: set[str] = set()
        counts = []
        with atomic_path(self.out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            for chunk in range(num_chunks):
                part = json.loads(self._part(chunk).read_text(encoding="utf-8"))
                for rec in part["records"]:
                    if rec["id"] in seen:
                        raise ValueError(f"{self._part(chunk)}: row id {rec['id']!r} is in an earlier chunk too")
                    seen.add(rec["id"])
                    fh.write(json.dumps(rec) + "\n")
                counts.append(part["counts"])
            fh.flush()
            os.fsync(fh.fileno())
        return counts

    def finish(self, summary: dict[str, Any]) -> None:
        """After :meth:`merge`: write ``OUT.meta.json`` (settings and ``summary``), drop the parts."""
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
