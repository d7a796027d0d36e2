"""The run manifest: which stages finished, with the fingerprint of the inputs they ran on.

``manifest.json`` in the run folder is rewritten atomically after every stage, so a crash or a
kill at any moment leaves either the old or the new record, never a torn one. A stage counts as
finished only once it is recorded here (after its outputs were written and checked).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..core.fileio import json_digest, write_atomic

VERSION = 1


def fingerprint(inputs: dict[str, Any]) -> str:
    """A stable hash of a stage's inputs (JSON with sorted keys)."""
    return json_digest(inputs, 20)


def diff_inputs(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two recorded input dicts (``key: old -> new``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: added ({_short(new[key])})")
            elif key not in new:
                out.append(f"{where}: removed (was {_short(old[key])})")
            else:
                out.extend(diff_inputs(old[key], new[key], where))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            # command lines: name a changed value by the flag before it
            flag = old[i - 1] if i and isinstance(old[i - 1], str) and old[i - 1].startswith("--") else None
            out.extend(diff_inputs(a, b, f"{prefix} {flag}" if flag else f"{prefix}[{i}]"))
        return out
    if old != new:
        return [f"{prefix}: {_short(old)} -> {_short(new)}"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class Manifest:
    """Finished stages of one run folder, by name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != VERSION:
                raise ValueError(f"{self.path}: manifest version {data.get('version')} is not {VERSION}")
            self.stages = data["stages"]

    def get(self, name: str) -> dict[str, Any] | None:
        """The record of a finished stage, or None."""
        return self.stages.get(name)

    def record(
        self,
        name: str,
        fp: str,
        inputs: dict[str, Any],
        outputs: list[str],
        started: float,
        log: str,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Mark ``name`` finished and save the manifest atomically."""
        self.stages[name] = {
            "fingerprint": fp,
            "inputs": inputs,
            "outputs": outputs,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "log": log,
            "metrics": metrics or {},
        }
        self.save()

    def forget(self, name: str) -> None:
        """Drop a stage's record (its outputs were moved aside to be redone) and save."""
        self.stages.pop(name, None)
        self.save()

    def save(self) -> None:
        """Write the manifest atomically."""
        write_atomic(self.path, json.dumps({"version": VERSION, "stages": self.stages}, indent=1) + "\n")
