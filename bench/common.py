"""Shared helpers of the bench scripts: interleaved timing with medians and paired ratios, peak
memory, machine facts, benchmark rows, markdown tables and atomic JSON output under
``build/bench/``.

These machines are shared and noisy, so every script compares its variants inside one run: each
repeat times every variant once (in a rotated order), figures are medians over repeats, and a
ratio is the median of per-repeat ratios. Ratios between variants of the same run are what to
read; absolute numbers move with the load.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "build" / "bench"
# settings that change CPU figures (bench/run_cpu.sh sets OMP_WAIT_POLICY; see README)
ENV_KEYS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OMP_PROC_BIND")


# -- machine ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Facts that qualify a run's figures: date, processor, cores, load, library versions, GPU."""
    import transformers

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for the top of a printed table."""
    where = info["gpu"] or f"{info['cpu']}, {info['cores']} cores"
    return (
        f"{info['date']} | {where} | load {info['load_average_1m']} | torch {info['torch']}, "
        f"transformers {info['transformers']}"
    )


def command_line() -> str:
    """The command that produced this run, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


# -- data ------------------------------------------------------------------------------------
def dolci_rows(count: int, cot_repeat: int = 1, first: int = 0) -> list[dict]:
    """``count`` Dolci-Think rows cycled from the shipped tiny file, row k (from ``first``) with a
    unique id and a unique "Case k." opening its user turn (no shared prompt prefixes), its CoT
    repeated ``cot_repeat`` times (longer rows, nearer Dolci-Think's lengths), and a fixed
    64-symbol ``abstract_trace`` (what a trace file would give Phase B)."""
    from abscot_plugin.core.symbols import symbol_names
    from abscot_plugin.testing.fixtures import data_path

    names = symbol_names(64)
    trace = "".join(names[(7 * i) % len(names)] for i in range(64))
    base = [json.loads(line) for line in data_path("dolci_tiny.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = []
    for k in range(first, first + count):
        row = json.loads(json.dumps(base[k % len(base)]))
        row["id"] = f"{row['id']}-{k}"
        user = next(m for m in row["messages"] if m["role"] == "user")
        user["content"] = f"Case {k}. {user['content']}"
        head, tail = row["messages"][-1]["content"].split("</think>", 1)
        cot = head.split("<think>", 1)[1].strip()
        row["messages"][-1]["content"] = "<think>\n" + "\n".join([cot] * cot_repeat) + "\n</think>" + tail
        row["abstract_trace"] = trace
        rows.append(row)
    return rows


# -- memory ----------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so that resident size means live memory."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of a block above what was in use when it began, in MiB.

    CUDA: the caching allocator's peak (``max_memory_allocated``). CPU: the process's resident
    high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size at
    entry, after a garbage collection and ``malloc_trim`` so that memory freed earlier but kept by
    malloc does not hide new growth. The trim makes the next block fault its pages in again, so
    :func:`interleaved` measures memory in calls of its own, never in timed ones. ``mib`` is None
    where neither is available.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self._start = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        gc.collect()
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._start = _proc_status_kib("VmRSS") * 1024
        except (OSError, KeyError):
            self._start = -1
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
        elif self._start >= 0:
            self.mib = max(0, _proc_status_kib("VmHWM") * 1024 - self._start) / 2**20


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- timing ----------------------------------------------------------------------------------
@dataclass
class Samples:
    """Wall-clock seconds of one variant's timed calls and the peak MiB of its memory call."""

    seconds: list[float] = field(default_factory=list)
    peak_mib: float | None = None
    graphs_compiled_while_timed: int = 0  # torch.compile graphs made during the timed calls

    @property
    def median_s(self) -> float:
        """Median of the timed calls, in seconds."""
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: the median, the spread and every sample."""
        return {
            "median_s": self.median_s,
            "min_s": min(self.seconds),
            "max_s": max(self.seconds),
            "seconds": self.seconds,
            "peak_mib": self.peak_mib,
            "graphs_compiled_while_timed": self.graphs_compiled_while_timed,
        }


def interleaved(
    variants: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device,
    desc: str = "",
    memory: bool = True,
) -> dict[str, Samples]:
    """Time each variant ``repeats`` times, interleaved: repeat r runs the variants in an order
    rotated by r, so that drifts in machine load hit every variant alike. ``warmup`` untimed calls
    of each come first (compilation, allocator and cache warm-up); with ``memory``, one more
    untimed call of each measures its peak memory (:class:`PeakMemory`)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
            synchronize(device)
    samples = {name: Samples() for name in names}
    graphs = compiled_graphs()
    for r in tqdm(range(repeats), desc=desc or "repeats", unit="rep", leave=False, file=sys.stderr):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            samples[name].seconds.append(time.perf_counter() - start)
    for name in names:
        samples[name].graphs_compiled_while_timed = compiled_graphs() - graphs
    if memory:
        for name in names:
            with PeakMemory(device) as mem:
                variants[name]()
            samples[name].peak_mib = mem.mib
    return samples


def compiled_graphs() -> int:
    """How many graphs torch.compile has made in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def paired_ratio(numerator: Samples, denominator: Samples) -> dict[str, Any]:
    """Ratio of two variants' times, repeat by repeat (each pair ran back to back, so load drifts
    cancel): the median of the per-repeat ratios, their range, and the text for a table cell."""
    ratios = sorted(a / b for a, b in zip(numerator.seconds, denominator.seconds, strict=True))
    med = statistics.median(ratios)
    return {"median": med, "min": ratios[0], "max": ratios[-1], "text": f"{med:.2f} [{ratios[0]:.2f}–{ratios[-1]:.2f}]"}


# -- output ----------------------------------------------------------------------------------
Column = tuple[str, str, str]  # (key, header, format spec)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and spec:
        return format(value, spec)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table (pastes into bench/README.md as is)."""
    head = "| " + " | ".join(header for _, header, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(key), spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``build/bench/<name>.json`` atomically (temporary file + ``os.replace``)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".json", dir=OUT_DIR)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report(
    name: str,
    title: str,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    columns: Sequence[Column],
    notes: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Print ``title``, the machine line, the table and notes; write the JSON; return its path."""
    print(f"\n## {title}\n")
    print(machine_line(info))
    print(f"command: {command_line()}\n")
    print(table(rows, columns))
    for note in notes:
        print(f"- {note}")
    path = write_json(
        name,
        {
            "title": title,
            "machine": info,
            "command": command_line(),
            "rows": rows,
            "notes": list(notes),
            **(extra or {}),
        },
    )
    print(f"\nfigures: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path
