"""Memory of the orchestrator's and the generator's data paths at two data sizes: each step runs
in a fresh process whose peak resident memory (``ru_maxrss`` from ``wait4``) is read; the ratio
large / small should be ≈ 1 when the step streams (memory independent of the number of rows).

    python bench/streaming.py [--rows 20000,80000] [--row-kib 80] [--keep]

Synthetic Dolci-Think rows of realistic size (``--row-kib``: a Dolci CoT has a median of ~19k
tokens, ~80 kB a row), each with its own id, in a run config of schedule ``per_phase`` with T = 3
that uses every row (N = rows / 6). Steps:

* ``dry run``: ``orchestrate.py RUN.yml --dry-run`` (plans the slices: one streamed pass that
  finds offsets, hashes and checks row names);
* ``slicing``: the plan plus writing every slice (what the runner does before the first stage);
* ``row check``: the generator's pass over its data (``rows.iter_rows``: JSON, unique names);
* ``trace merge``: merging a trace file's chunks (1024 rows each, ~1.2 kB records) in row order;
* ``whole-file read``: ``read_text().splitlines()`` of the data, what the plan did before it
  streamed (a reference; skipped above ``--whole-max-gib``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abscot_plugin.core.symbols import symbol_names  # noqa: E402

REPO = Path(__file__).resolve().parents[1]  # (bench.common imports torch: not in the measured processes)

ROUNDS = 3
CHUNK = 1024


def write_rows(path: Path, rows: int, row_kib: int) -> None:
    """``rows`` Dolci-like rows of about ``row_kib`` KiB each (the CoT fills them)."""
    step = "Compute the next partial sum and check it against the bound. "
    cot = (step * (row_kib * 1024 // len(step) + 1))[: row_kib * 1024 - 200]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            row = {"id": f"syn-{i:07d}", "messages": [
                {"role": "user", "content": f"Problem {i}: what is {i} + {i}?"},
                {"role": "assistant", "content": f"<think>{cot}</think>The answer is {2 * i}."},
            ]}  # fmt: skip
            fh.write(json.dumps(row) + "\n")


def run_config(folder: Path, data: Path, rows: int) -> Path:
    """A T = 3 per-phase run config over every row of ``data``."""
    cfg = {
        "output_dir": str(folder / "run"), "base_model": "Qwen/Qwen3-4B", "rounds": ROUNDS,
        "data": {"path": str(data), "num_rows": rows // (2 * ROUNDS), "schedule": "per_phase"},
        "phase_a": {"config": str(REPO / "axolotl_configs" / "tiny_phase_a.yml")},
        "phase_b": {"config": str(REPO / "axolotl_configs" / "tiny_phase_b.yml")},
        "generation": {"backend": "hf"},
    }  # fmt: skip
    path = folder / "run.yml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def write_chunks(out: Path, rows: int) -> None:
    """The chunks a finished generation leaves (records of ~1.2 kB: 128-symbol traces)."""
    from abscot_plugin.core.traces import TraceWriter

    writer = TraceWriter(out, {}, CHUNK)
    writer.start()
    trace = "".join(symbol_names(64)[:64]) * 2
    for chunk in range(-(-rows // CHUNK)):
        ids = range(chunk * CHUNK, min(rows, (chunk + 1) * CHUNK))
        records = [
            {"id": f"syn-{i:07d}", "trace": trace, "length": 128, "prefix_tokens": 19000, "cot_cut": 0} for i in ids
        ]
        writer.write_chunk(chunk, records, {})


def child(step: str, args: list[str]) -> None:
    """The measured work of one step, in this (fresh) process; prints its peak resident memory
    (``VmHWM``: of this program only, unlike ``ru_maxrss``, which counts the forking parent)."""
    if step == "dryrun":
        import runpy

        sys.argv = ["orchestrate.py", args[0], "--dry-run"]
        try:
            runpy.run_path(str(REPO / "orchestrate.py"), run_name="__main__")
        except SystemExit as exc:
            if exc.code:
                raise
    elif step == "slicing":
        from abscot_plugin.orchestration.plan import build_plan
        from abscot_plugin.orchestration.run_config import load_run_config
        from abscot_plugin.orchestration.slices import prepare_slice

        for piece in build_plan(load_run_config(args[0])).slices.values():
            prepare_slice(piece)
    elif step == "rows":
        from abscot_plugin.core.rows import iter_rows

        print(sum(1 for _ in iter_rows(args[0])))
    elif step == "merge":
        from abscot_plugin.core.traces import TraceWriter

        writer = TraceWriter(args[0], {}, CHUNK)
        writer.merge(-(-int(args[1]) // CHUNK))
    elif step == "whole":
        print(len([line for line in Path(args[0]).read_text(encoding="utf-8").splitlines() if line.strip()]))
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(line for line in status if line.startswith("VmHWM:")).split()[1], file=sys.stderr)


def measure(cmd: list[str]) -> tuple[float, float]:
    """(peak resident MiB, seconds) of one step's process."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return int(proc.stderr.split()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="20000,80000", help="two data sizes (rows)")
    parser.add_argument("--row-kib", type=int, default=80, help="size of a row")
    parser.add_argument("--whole-max-gib", type=float, default=2.0, help="largest file read whole")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic files")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    from bench.common import machine, ratio, report

    sizes = [int(n) for n in args.rows.split(",")]
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    figures: dict[str, dict[int, tuple[float, float]]] = {}
    for rows in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"abscot-stream-{rows}-"))
        try:
            data = folder / "rows.jsonl"
            write_rows(data, rows, args.row_kib)
            config = run_config(folder, data, rows)
            write_chunks(folder / "traces.jsonl", rows)
            gib = data.stat().st_size / 2**30
            steps = {
                "dry run": [*me, "dryrun", str(config)],
                "slicing": [*me, "slicing", str(config)],
                "row check": [*me, "rows", str(data)],
                "trace merge": [*me, "merge", str(folder / "traces.jsonl"), str(rows)],
            }
            if gib <= args.whole_max_gib:
                steps["whole-file read (former plan)"] = [*me, "whole", str(data)]
            for name, cmd in steps.items():
                figures.setdefault(name, {})[rows] = measure(cmd)
                print(
                    f"{rows} rows ({gib:.2f} GiB): {name}: {figures[name][rows][0]:.0f} MiB, "
                    f"{figures[name][rows][1]:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    small, large = sizes
    table_rows = []
    for name, by_size in figures.items():
        table_rows.append({
            "step": name, "small MiB": by_size.get(small, (None,))[0], "large MiB": by_size.get(large, (None,))[0],
            "ratio": ratio(by_size.get(large, (None,))[0], by_size.get(small, (None,))[0]),
            "small s": by_size.get(small, (None, None))[1], "large s": by_size.get(large, (None, None))[1],
        })  # fmt: skip
    columns = [
        ("step", "step", ""),
        ("small MiB", f"peak MiB, {small} rows", ".0f"),
        ("large MiB", f"peak MiB, {large} rows", ".0f"),
        ("ratio", "ratio", ".2f"),
        ("small s", f"s, {small} rows", ".1f"),
        ("large s", f"s, {large} rows", ".1f"),
    ]
    notes = [
        f"rows of {args.row_kib} KiB; T = {ROUNDS}, schedule per_phase, N = rows / {2 * ROUNDS}: every row used",
        "peak resident memory of the step's own process (interpreter and imports included)",
    ]
    report(
        "streaming",
        "Streaming memory: data slices, row checks, trace merge",
        machine(),
        table_rows,
        columns,
        notes,
        {"sizes": sizes, "row_kib": args.row_kib},
    )


if __name__ == "__main__":
    main()
