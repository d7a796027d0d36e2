"""The data slices a run trains and generates on, planned and written as streams: one pass over
``data.path`` finds where each slice starts (a byte offset), hashes its rows and checks their
names, holding one line at a time, so memory does not grow with the size of the rows (only the
set of row names does); the runner copies each slice from its offset (:func:`prepare_slice`).

A slice holds its rows' lines, blank lines dropped, each ending in ``\\n`` (``\\r\\n`` becomes
``\\n``); its ``sha256`` is the digest of exactly those bytes (the stages' fingerprints read it).
Rows split only at line ends: a row may hold U+2028 or U+0085, which ``str.splitlines`` would cut.
Example (N = 2, schedule ``per_round``, T = 2)::

    data.path lines 1-2 -> OUT/data/round1.jsonl   (offset of line 1)
    data.path lines 3-4 -> OUT/data/round2.jsonl   (offset of line 3)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.choices import Phase
from ..core.fileio import atomic_path, file_digest
from ..core.rows import row_id_of
from .run_config import PlanError, RunConfig


@dataclass(frozen=True)
class DataSlice:
    """``rows`` rows of ``source`` from byte ``offset`` on, to be written to ``path``."""

    path: Path
    source: Path
    offset: int
    rows: int
    sha256: str


def _row_name(cfg: RunConfig, line: bytes, number: int) -> str:
    """The name of the ``number``-th row (1-based) that trace files are matched to rows by: its
    ``data.id_field``, else a hash of its messages (:func:`~abscot_plugin.core.rows.row_id_of`)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        row = None
    if not isinstance(row, dict):
        raise PlanError(f"data.path {cfg.data.path}, row {number}: not a JSON object")
    return row_id_of(row, cfg.data.id_field)


def data_slices(cfg: RunConfig) -> dict[tuple[int, Phase], DataSlice]:
    """(round, phase) -> its slice, following ``data.schedule``; every row used needs a unique
    name (PlanError names the row)."""
    n, rounds, schedule = cfg.data.num_rows, cfg.rounds, cfg.data.schedule
    names = {
        (t, p): {"same": "all", "per_round": f"round{t}", "per_phase": f"round{t}_{p}"}[schedule]
        for t in range(1, rounds + 1) for p in Phase
    }  # fmt: skip
    order = list(dict.fromkeys(names.values()))
    needed = len(order) * n
    offsets: list[int] = []
    digests: list[str] = []
    seen: set[str] = set()
    count = 0
    with open(cfg.data.path, "rb") as fh:
        offset = 0
        for line in fh:
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            if count == needed:
                break
            count += 1
            if (count - 1) % n == 0:  # a slice's first row
                offsets.append(start)
                digests.append(hashlib.sha256())
            name = _row_name(cfg, line, count)
            if name in seen:
                raise PlanError(f"data.path {cfg.data.path}, row {count}: duplicate id {name!r}")
            seen.add(name)
            digests[-1].update(line.rstrip(b"\r\n") + b"\n")
    if count < needed:
        raise PlanError(
            f"data.path {cfg.data.path} has {count} rows; schedule {schedule} with T={rounds} and N={n} needs {needed}"
        )
    folder = cfg.output_dir / "data"
    pieces = {
        name: DataSlice(folder / f"{name}.jsonl", cfg.data.path, offsets[k], n, digests[k].hexdigest())
        for k, name in enumerate(order)
    }
    return {key: pieces[name] for key, name in names.items()}


def write_slice(piece: DataSlice) -> None:
    """Copy the slice's rows from its source to its path (atomically, one line in memory);
    PlanError if the source changed since the plan was made."""
    digest = hashlib.sha256()
    written = 0
    with open(piece.source, "rb") as src, atomic_path(piece.path) as tmp, open(tmp, "wb") as dst:
        src.seek(piece.offset)
        for line in src:
            if written == piece.rows:
                break
            if line.strip():
                row = line.rstrip(b"\r\n") + b"\n"
                digest.update(row)
                dst.write(row)
                written += 1
        if digest.hexdigest() != piece.sha256:
            raise PlanError(f"data.path {piece.source} changed since the run was planned; plan it again")


def prepare_slice(piece: DataSlice) -> None:
    """Write the slice unless its file already holds exactly its rows."""
    if not piece.path.exists() or file_digest(piece.path) != piece.sha256:
        write_slice(piece)
