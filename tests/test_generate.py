"""Trace generation (abscot_plugin.generate): validity, truncation, resume, bad rows, both backends."""

from __future__ import annotations

import json

import pytest
from support import VLLM_GENERATE, read_jsonl

from abscot_plugin.decode import HFDecoder, TraceSettings
from abscot_plugin.fixtures import data_path
from abscot_plugin.generate import generate_traces, main, read_rows
from abscot_plugin.sequences import SequenceBuilder
from abscot_plugin.traces import load_trace_file, parse_trace
from abscot_plugin.vocab import AbstractVocab

DOLCI = data_path("dolci_tiny.jsonl")
SETTINGS = TraceSettings(m_min=3, m_max=10, temperature=1.0)


@pytest.fixture(scope="module")
def hf(tiny_extended):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_extended)
    vocab = AbstractVocab.from_tokenizer(tok, 64)
    model = AutoModelForCausalLM.from_pretrained(tiny_extended)
    return HFDecoder(model, tok, vocab, batch_size=4), SequenceBuilder(tok, vocab)


class CountingDecoder(HFDecoder):
    """The real HF decoder, counting prompts; ``fail_after`` calls it raises (a crash mid-run)."""

    def __init__(self, base: HFDecoder, fail_after: int | None = None):
        self.__dict__.update(base.__dict__)
        self.prompts = 0
        self.calls = 0
        self.fail_after = fail_after

    def traces(self, prefixes, settings):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.prompts += len(prefixes)
        return super().traces(prefixes, settings)


def check_output(path, ids, settings=SETTINGS):
    rows = read_jsonl(path)
    assert [r["id"] for r in rows] == ids
    for r in rows:
        symbols = parse_trace(r["trace"], 64, settings.m_max)
        assert settings.m_min <= len(symbols) == r["length"] <= settings.m_max
    assert set(load_trace_file(path, 64, settings.m_max)) == set(ids)  # what Phase B training reads
    return rows


def test_cli_phase_a_truncates_and_counts(tiny_extended, tmp_path, capsys):
    out = tmp_path / "a.jsonl"
    main([
        "--model", str(tiny_extended), "--data", str(DOLCI), "--mode", "phase_a", "--out", str(out),
        "--limit", "6", "--max-model-len", "200", "--m-min", "3", "--m-max", "10", "--seed", "1",
    ])
    rows = check_output(out, [f"dolci-tiny-{i:03d}" for i in range(6)])
    assert all(r["prefix_tokens"] <= 200 - 11 for r in rows)
    cut = [r for r in rows if r["prefix_cut"]]
    assert cut, "Phase A prefixes of the fixture exceed 189 tokens: some must be cut"
    err = capsys.readouterr().err
    assert f"{len(cut)} prefixes left-truncated ({sum(r['prefix_cut'] for r in cut)} tokens cut)" in err
    assert "prompts/s" in err and "trace tokens/s" in err
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["settings"]["mode"] == "phase_a" and meta["summary"]["generated"] == 6
    assert not (tmp_path / "a.jsonl.parts").exists()


def test_resume_after_crash_regenerates_nothing_finished(hf, tmp_path):
    decoder, builder = hf
    rows = read_rows(DOLCI, limit=10)
    out = tmp_path / "b.jsonl"
    crashing = CountingDecoder(decoder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_traces(crashing, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=4)
    parts = sorted((tmp_path / "b.jsonl.parts").glob("part-*.jsonl"))
    assert len(parts) == 2 and not out.exists()
    saved = [r for p in parts for r in read_jsonl(p)]
    resumed = CountingDecoder(decoder)
    summary = generate_traces(resumed, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=4)
    assert resumed.prompts == 2 and summary.resumed == 8 and summary.generated == 2
    final = check_output(out, [row_id for row_id, _ in rows])
    assert final[:8] == saved  # finished rows kept as they were
    again = CountingDecoder(decoder)
    generate_traces(again, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=4)
    assert again.prompts == 0 and read_jsonl(out) == final


def test_resume_with_other_settings_is_refused(hf, tmp_path):
    decoder, builder = hf
    rows = read_rows(DOLCI, limit=2)
    out = tmp_path / "c.jsonl"
    generate_traces(decoder, builder, rows, "phase_b", out, SETTINGS, 512, settings_record={"seed": 0})
    with pytest.raises(ValueError, match="different settings \\(seed\\)"):
        generate_traces(decoder, builder, rows, "phase_b", out, SETTINGS, 512, settings_record={"seed": 1})


def test_bad_rows_named_or_skipped(hf, tmp_path):
    decoder, builder = hf
    data = tmp_path / "rows.jsonl"
    good = DOLCI.read_text().splitlines()[:2]
    bad = json.dumps({"id": "broken-7", "messages": [{"role": "user", "content": "hi"}]})
    data.write_text("\n".join([good[0], bad, good[1]]) + "\n")
    rows = read_rows(data)
    with pytest.raises(ValueError, match="row broken-7: last message must be the assistant's"):
        generate_traces(decoder, builder, rows, "phase_a", tmp_path / "x.jsonl", SETTINGS, 512)
    summary = generate_traces(
        decoder, builder, rows, "phase_a", tmp_path / "y.jsonl", SETTINGS, 512, skip_bad_rows=True
    )
    assert summary.skipped_bad_rows == 1 and len(read_jsonl(tmp_path / "y.jsonl")) == 2
    (tmp_path / "dup.jsonl").write_text("\n".join([good[0], good[0]]) + "\n")
    with pytest.raises(ValueError, match="dup.jsonl:2: duplicate row id 'dolci-tiny-000'"):
        read_rows(tmp_path / "dup.jsonl")
    no_id = json.loads(good[0])
    del no_id["id"]
    (tmp_path / "noid.jsonl").write_text("\n".join([json.dumps(no_id)] * 2) + "\n")
    with pytest.raises(ValueError, match="noid.jsonl:2: duplicate row id 'sha1:[0-9a-f]{12}'"):
        read_rows(tmp_path / "noid.jsonl")


def test_vllm_backend(vllm_run):
    """The vLLM backend built by the CLI's loader, in the vLLM environment: same guarantees and
    counts as the transformers backend."""
    rows = check_output(
        vllm_run["out"], [f"dolci-tiny-{i:03d}" for i in range(VLLM_GENERATE["limit"])],
        TraceSettings(m_min=VLLM_GENERATE["m_min"], m_max=VLLM_GENERATE["m_max"]),
    )
    budget = VLLM_GENERATE["max_model_len"] - VLLM_GENERATE["m_max"] - 1
    assert all(r["prefix_tokens"] <= budget for r in rows)
    cut = [r for r in rows if r["prefix_cut"]]
    assert cut and f"{len(cut)} prefixes left-truncated" in vllm_run["generate_summary"]
