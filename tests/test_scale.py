"""Scale-out: data-parallel trace generation (same traces for any number of workers), a killed
data-parallel run resumed with nothing lost or duplicated, the chunk files' merge, streamed rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support import ROOT, offline_env, read_jsonl

from abscot_plugin.core.rows import iter_rows, read_rows
from abscot_plugin.core.traces import TraceWriter, read_meta
from abscot_plugin.testing.fixtures import data_path

DOLCI = data_path("dolci_tiny.jsonl")
ROWS = 40  # 20 chunks of 2 rows: both workers get several


def generate_cmd(model, out, workers: int) -> list[str]:
    """The generate CLI on the HF backend (CPU), Phase B, ``workers`` data-parallel workers."""
    return [
        sys.executable, "-m", "abscot_plugin.generation.generate", "--model", str(model), "--data", str(DOLCI),
        "--mode", "phase_b", "--out", str(out), "--backend", "hf", "--limit", str(ROWS), "--chunk-size", "2",
        "--batch-size", "2", "--m-min", "3", "--m-max", "24", "--temperature", "1.0", "--seed", "5",
        "--skip-bad-rows", "--data-parallel-size", str(workers),
    ]  # fmt: skip


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def single(tiny_extended, tmp_path_factory):
    """The trace file of one worker (the reference)."""
    out = tmp_path_factory.mktemp("dp1") / "traces.jsonl"
    run(generate_cmd(tiny_extended, out, 1))
    return out


@pytest.mark.slow
def test_two_data_parallel_workers_write_the_same_traces_as_one(tiny_extended, single, tmp_path):
    """DP=2 (two worker processes, each with its own model and half of the chunks) writes the file
    of DP=1 byte for byte: chunks are fixed by row index, each prompt has its own seed."""
    out = tmp_path / "traces.jsonl"
    run(generate_cmd(tiny_extended, out, 2))
    assert out.read_bytes() == single.read_bytes()
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == read_meta(single)["summary"]["generated"] > ROWS // 2
    summary = read_meta(out)["summary"]
    assert summary == {**read_meta(single)["summary"], "seconds": summary["seconds"]}
    assert not out.with_name("traces.jsonl.parts").exists()


@pytest.mark.slow
def test_killed_data_parallel_run_resumes_without_losing_or_duplicating_rows(tiny_extended, single, tmp_path):
    """SIGKILL to the whole DP=2 run (coordinator and both workers) once some chunks are saved: the
    rerun regenerates only the missing chunks and merges the file of an uninterrupted run."""
    out = tmp_path / "traces.jsonl"
    parts = out.with_name("traces.jsonl.parts")
    proc = subprocess.Popen(
        generate_cmd(tiny_extended, out, 2),
        cwd=ROOT,
        env=offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while len(list(parts.glob("part-*.json"))) < 3 and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = {p.name: p.read_bytes() for p in parts.glob("part-*.json")}
    assert 3 <= len(saved) < ROWS // 2 and not out.exists(), "the run finished before it could be killed"
    err = run(generate_cmd(tiny_extended, out, 2)).stderr
    assert out.read_bytes() == single.read_bytes()
    summary = read_meta(out)["summary"]
    resumed = sum(len(json.loads(text)["records"]) for text in saved.values())
    assert summary["resumed"] == resumed and summary["resumed"] + summary["generated"] == len(read_jsonl(out))
    assert f"{resumed} rows resumed from an earlier run" in err


def test_merge_refuses_missing_chunks_and_repeated_rows(tmp_path):
    """The merge names an unfinished chunk, and a row saved in two chunks, and then writes nothing."""
    writer = TraceWriter(tmp_path / "t.jsonl", {"seed": 0}, chunk_size=2)
    writer.start()
    record = {"id": "r0", "trace": "<TOKEN_A>", "length": 1, "prefix_tokens": 3, "cot_cut": 0}
    writer.write_chunk(0, [record], {})
    writer.write_chunk(2, [record], {})
    with pytest.raises(ValueError, match=r"chunks \[1\] of 3 are not finished"):
        writer.merge(3)
    writer.write_chunk(1, [{**record, "id": "r1"}], {})
    with pytest.raises(ValueError, match="part-0000002.json: row id 'r0' is in an earlier chunk too"):
        writer.merge(3)
    assert not (tmp_path / "t.jsonl").exists()
    assert [c for c in writer.merge(2)] == [{}, {}] and len(read_jsonl(tmp_path / "t.jsonl")) == 2


def test_a_resumed_run_keeps_the_chunks_its_parts_were_cut_into(tmp_path):
    writer = TraceWriter(tmp_path / "t.jsonl", {"seed": 0}, chunk_size=3)
    writer.start()
    assert TraceWriter(tmp_path / "t.jsonl", {"seed": 0}, chunk_size=8).chunk_size == 3
    with pytest.raises(ValueError, match="different settings \\(seed\\)"):
        TraceWriter(tmp_path / "t.jsonl", {"seed": 1}, chunk_size=3)


def test_streamed_rows_read_only_the_wanted_ones(tmp_path):
    """A worker's rows: indexes count every non-blank line, unwanted lines are not even parsed."""
    data = tmp_path / "rows.jsonl"
    lines = DOLCI.read_text().splitlines()[:4]
    data.write_text("\n".join([lines[0], "", "not json", lines[2], lines[3]]) + "\n")
    assert [(i, name) for i, name, _ in iter_rows(data, wanted=lambda i: i != 1)] == [
        (0, "dolci-tiny-000"), (2, "dolci-tiny-002"), (3, "dolci-tiny-003"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="rows.jsonl:3: not valid JSON"):
        read_rows(data)
    assert len(list(iter_rows(data, limit=1))) == 1
