"""Row counts of a tokenised Abstract-CoT dataset: input rows and rows skipped, by kind.

``datasets.map`` runs the strategy's batches in several processes (``dataset_num_proc``), so each
batch writes its counts as one small JSON file into a folder of its own tokenisation
(:func:`write_batch`, atomic, no shared file); the strategy sums them once the map is done
(:func:`sum_batches`) and records the total in the dataset's ``info.description``
(:func:`record`). ``datasets`` keeps that description through shuffles, filters, splits and
concatenation, and axolotl's prepared-dataset cache stores it (``dataset_info.json``), so a run
that loads the cache reads the same totals (:func:`recorded`). One line per tokenised dataset::

    abscot-data: {"format": "bottleneck", "rows": 54, "skipped": {"no_think": 3}, "id": "…"}

Pure Python (no axolotl, no torch).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..core.fileio import write_atomic

RECORD_PREFIX = "abscot-data: "


@dataclass
class DataCounts:
    """Rows given to one format's tokeniser and the rows it skipped, by ``BadRowError.kind``."""

    format: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, rows: int, skipped: dict[str, int]) -> None:
        """Count ``rows`` more input rows, of which ``skipped`` (by kind) were skipped."""
        self.rows += rows
        for kind, n in skipped.items():
            self.skipped[kind] = self.skipped.get(kind, 0) + n

    def line(self, where: str = "") -> str:
        """E.g. ``abscot bottleneck data: skipped 6 of 54 rows: 3× no_think, 2× empty_answer``."""
        by_count = sorted(self.skipped.items(), key=lambda kind_n: (-kind_n[1], kind_n[0]))
        kinds = ", ".join(f"{n}× {kind}" for kind, n in by_count)
        text = f"abscot {self.format} data{where}: skipped {self.num_skipped} of {self.rows} rows"
        return f"{text}: {kinds}" if kinds else text


def write_batch(folder: str | Path, rows: int, skipped: dict[str, int]) -> None:
    """Write one batch's counts to a new file in ``folder`` (atomically: :func:`sum_batches`
    never reads half a file; temporary names do not end in ``.json``)."""
    write_atomic(Path(folder) / f"{uuid.uuid4().hex}.json", json.dumps({"rows": rows, "skipped": skipped}))


def sum_batches(folder: str | Path, format_name: str) -> DataCounts:
    """The total of every batch file in ``folder``."""
    counts = DataCounts(format_name)
    for path in sorted(Path(folder).glob("*.json")):
        batch = json.loads(path.read_text(encoding="utf-8"))
        counts.add(batch["rows"], batch["skipped"])
    return counts


def record(dataset, counts: DataCounts) -> None:
    """Append ``counts`` to ``dataset.info.description`` (a unique id keeps two equal records of
    two dataset entries apart when ``datasets`` merges the descriptions of concatenated data)."""
    payload = {"format": counts.format, "rows": counts.rows, "skipped": counts.skipped}
    line = RECORD_PREFIX + json.dumps({**payload, "id": uuid.uuid4().hex}, sort_keys=True)
    dataset.info.description = "\n".join(filter(None, [dataset.info.description, line]))


def recorded(dataset) -> dict[str, DataCounts] | None:
    """The recorded counts of ``dataset`` summed by format, or None when it carries no record."""
    info = getattr(dataset, "info", None)
    lines = [
        line[len(RECORD_PREFIX) :]
        for line in ((info.description or "") if info else "").splitlines()
        if line.startswith(RECORD_PREFIX)
    ]
    if not lines:
        return None
    totals: dict[str, DataCounts] = {}
    for line in lines:
        entry = json.loads(line)
        totals.setdefault(entry["format"], DataCounts(entry["format"])).add(entry["rows"], entry["skipped"])
    return totals
