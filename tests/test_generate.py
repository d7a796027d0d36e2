"""Trace generation (abscot_plugin.generation.generate): validity, Phase A prefixes = training prefixes,
resume, chunking, bad rows, both backends."""

from __future__ import annotations

import json

import pytest
from support import VLLM_GENERATE, batch_of, read_jsonl, strategy

from abscot_plugin.args import RowLayout
from abscot_plugin.core.rows import parse_chat_row, read_rows
from abscot_plugin.core.traces import TraceSettings, load_trace_file, parse_trace
from abscot_plugin.generation.generate import main
from abscot_plugin.generation.hf_decoder import HFDecoder
from abscot_plugin.generation.runner import generate_traces
from abscot_plugin.testing.fixtures import data_path
from abscot_plugin.tokens.sequences import SequenceBuilder
from abscot_plugin.tokens.vocab import AbstractVocab

DOLCI = data_path("dolci_tiny.jsonl")
SETTINGS = TraceSettings(m_min=3, m_max=10, temperature=1.0)


def load(model_dir) -> tuple[HFDecoder, SequenceBuilder]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = AbstractVocab.from_tokenizer(tok, 64)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return HFDecoder(model, tok, vocab, batch_size=4), SequenceBuilder(tok, vocab)


@pytest.fixture(scope="module")
def hf(tiny_extended):
    return load(tiny_extended)


@pytest.fixture(scope="module", params=["tiny", "qwen3"])
def hf_models(request, hf):
    """The tiny model, then a tiny random Qwen3 on Qwen3's real tokenizer and vocabulary."""
    return hf if request.param == "tiny" else load(request.getfixturevalue("qwen3_tiny_extended"))


class CountingDecoder(HFDecoder):
    """The real HF decoder, recording the prompts it gets; ``fail_after`` calls it raises (a
    crash mid-run)."""

    def __init__(self, base: HFDecoder, fail_after: int | None = None):
        self.__dict__.update(base.__dict__)
        self.seen: list[list[int]] = []
        self.calls = 0
        self.fail_after = fail_after

    @property
    def prompts(self) -> int:
        return len(self.seen)

    def traces(self, prefixes, settings):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.seen += prefixes
        return super().traces(prefixes, settings)


def check_output(path, ids, settings=SETTINGS):
    rows = read_jsonl(path)
    assert [r["id"] for r in rows] == ids
    for r in rows:
        symbols = parse_trace(r["trace"], 64, settings.m_max)
        assert settings.m_min <= len(symbols) == r["length"] <= settings.m_max
    assert set(load_trace_file(path, 64, settings.m_max)) == set(ids)  # what Phase B training reads
    return rows


def test_cli_phase_a_cuts_cots_as_training_and_warns_on_a_short_engine(tiny_extended, tmp_path, capsys):
    """--sequence-len 256, --m-max 16, --cot-keep start (the Phase A training's layout) with a
    200-token engine: every prefix fits the engine with room for a 16-symbol trace, long CoTs are
    cut (counted), and the rows whose teacher sees less CoT than their training row are counted
    and warned about; the meta file records the layout."""
    out = tmp_path / "a.jsonl"
    main(
        [
            "--model",
            str(tiny_extended),
            "--data",
            str(DOLCI),
            "--mode",
            "phase_a",
            "--out",
            str(out),
            "--limit",
            "6",
            "--max-model-len",
            "200",
            "--sequence-len",
            "256",
            "--cot-keep",
            "start",
            "--m-min",
            "3",
            "--m-max",
            "16",
            "--seed",
            "1",
        ]
    )
    rows = check_output(out, [f"dolci-tiny-{i:03d}" for i in range(6)], TraceSettings(m_min=3, m_max=16))
    assert all(r["prefix_tokens"] + 16 + 1 <= 200 for r in rows)
    cut = [r for r in rows if r["cot_cut"]]
    assert [r["id"] for r in cut] == ["dolci-tiny-000"]  # the fixture's one long CoT among six
    err = capsys.readouterr().err
    assert f"1 CoTs cut as training cuts them ({cut[0]['cot_cut']} tokens)" in err
    assert "WARNING: 1 rows decoded with less CoT than their training rows hold" in err
    assert "prompts/s" in err and "trace tokens/s" in err
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["settings"]["train_layout"] == {"sequence_len": 256, "m_max": 16, "cot_keep": "start"}
    assert meta["summary"]["short_context"] == 1 and meta["summary"]["generated"] == 6
    assert not (tmp_path / "a.jsonl.parts").exists()


@pytest.mark.parametrize("keep", ["end", "start", "both_ends"])
def test_phase_a_prefixes_are_the_training_rows_prefixes(plugin_active, hf_models, tmp_path, keep):
    """Round t >= 2: the Phase A teacher decodes from exactly the ids that Phase A training puts
    before z for that row (the strategy, reading the generated trace file), CoTs cut alike; on
    the tiny tokenizer and on Qwen3's real one."""
    decoder, builder = hf_models
    rows = read_rows(DOLCI, limit=8)
    recorder = CountingDecoder(decoder)
    out = tmp_path / "a.jsonl"
    layout = RowLayout(sequence_len=200, m_max=16, cot_keep=keep)
    generate_traces(recorder, builder, rows, "phase_a", out, SETTINGS, 4096, layout, chunk_size=3)
    records = {r["id"]: r for r in read_jsonl(out)}
    train = strategy(
        builder.tok, sequence_len=200, abscot_m_max=16, abscot_cot_keep=keep, abscot_trace_file=str(out)
    ).tokenize_prompt(batch_of([row for _, row in rows]))
    # the decoder got the prefixes in row order, chunk by chunk
    prefixes = dict(zip([row_id for row_id, _ in rows], recorder.seen, strict=True))
    assert any(r["cot_cut"] for r in records.values())
    for (row_id, _), ids, cut in zip(rows, train["input_ids"], train["abscot_cot_cut"], strict=True):
        prefix = prefixes[row_id]
        assert ids[: len(prefix)] == prefix and records[row_id]["cot_cut"] == cut
        trace = builder.trace_ids(records[row_id]["trace"])
        assert ids[len(prefix) : len(prefix) + len(trace) + 1] == trace + [builder.vocab.end_id]


def test_rows_training_rejects_are_bad_rows_in_generation_too(plugin_active, hf, tmp_path, caplog):
    """sequence_len 110 with m_max 16: rows whose prompt + answer + 18 exceed it are too long for
    training and for generation alike, named, or skipped and counted by kind."""
    decoder, builder = hf
    rows = read_rows(DOLCI, limit=6)
    layout = RowLayout(sequence_len=110, m_max=16, cot_keep="end")
    with pytest.raises(ValueError, match="row dolci-tiny-001: .*sequence_len=110 \\(pass --skip-bad-rows"):
        generate_traces(decoder, builder, rows, "phase_a", tmp_path / "x.jsonl", SETTINGS, 4096, layout)
    summary = generate_traces(
        decoder, builder, rows, "phase_a", tmp_path / "a.jsonl", SETTINGS, 4096, layout, skip_bad_rows=True
    )
    kept = [r["id"] for r in read_jsonl(tmp_path / "a.jsonl")]
    assert 0 < len(kept) < len(rows) and summary.skipped_kinds == {"too_long": len(rows) - len(kept)}
    assert f"{len(rows) - len(kept)} bad rows skipped ({len(rows) - len(kept)}× too_long)" in summary.line()
    caplog.set_level("WARNING")  # training on the same rows (its own random traces) skips the same ones
    train = strategy(builder.tok, sequence_len=110, abscot_m_max=16, abscot_skip_bad_rows=True).tokenize_prompt(
        batch_of([r for _, r in rows])
    )
    prompts = [builder.phase_a_prefix(parse_chat_row(r, i), layout)[0] for i, r in rows if i in kept]
    assert [ids[: len(p)] for ids, p in zip(train["input_ids"], prompts, strict=True)] == prompts
    assert f"({len(rows) - len(kept)}× too_long)" in caplog.text


def test_phase_b_prompt_longer_than_the_budget_is_a_bad_row(hf, tmp_path):
    """Phase B prefixes are never cut: a prompt without room for m_max + 1 tokens is an error
    naming the row, or skipped and counted."""
    decoder, builder = hf
    rows = read_rows(DOLCI, limit=4)  # prompts of 46 and 66 tokens; budget 60 - 11 = 49
    with pytest.raises(ValueError, match="row dolci-tiny-001: prefix of 67 tokens leaves no room for 10 symbols"):
        generate_traces(decoder, builder, rows, "phase_b", tmp_path / "x.jsonl", SETTINGS, 60)
    summary = generate_traces(decoder, builder, rows, "phase_b", tmp_path / "b.jsonl", SETTINGS, 60, skip_bad_rows=True)
    records = read_jsonl(tmp_path / "b.jsonl")
    assert [r["id"] for r in records] == ["dolci-tiny-000", "dolci-tiny-003"]
    assert summary.skipped_kinds == {"too_long": 2} and all(r["cot_cut"] == 0 for r in records)


def test_traces_do_not_depend_on_chunking(hf, tmp_path):
    """A run interrupted after two chunks of 3 and resumed in chunks of 5 writes the same file
    as one uninterrupted run (each prompt has its own seed)."""
    decoder, builder = hf
    rows = read_rows(DOLCI, limit=13)
    generate_traces(decoder, builder, rows, "phase_b", tmp_path / "one.jsonl", SETTINGS, 512)
    out = tmp_path / "resumed.jsonl"
    crashing = CountingDecoder(decoder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_traces(crashing, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=3)
    generate_traces(decoder, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=5)
    assert out.read_text() == (tmp_path / "one.jsonl").read_text()


def test_resume_after_crash_regenerates_nothing_finished(hf, tmp_path):
    decoder, builder = hf
    rows = read_rows(DOLCI, limit=10)
    out = tmp_path / "b.jsonl"
    crashing = CountingDecoder(decoder, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        generate_traces(crashing, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=4)
    parts = sorted((tmp_path / "b.jsonl.parts").glob("part-*.json"))
    assert len(parts) == 2 and not out.exists()
    saved = [r for p in parts for r in json.loads(p.read_text())["records"]]
    resumed = CountingDecoder(decoder)
    summary = generate_traces(resumed, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=4)
    assert resumed.prompts == 2 and summary.resumed == 8 and summary.generated == 2
    final = check_output(out, [row_id for row_id, _ in rows])
    assert final[:8] == saved  # finished rows kept as they were
    again = CountingDecoder(decoder)
    generate_traces(again, builder, rows, "phase_b", out, SETTINGS, 512, chunk_size=4)
    assert again.prompts == 0 and read_jsonl(out) == final


def test_a_backend_reply_missing_a_trace_fails_loudly(hf, tmp_path, monkeypatch):
    """A real HF decoder that returns one trace fewer than its prompts: generation raises and
    writes no part for that chunk."""
    decoder, builder = hf
    traces = decoder.traces
    monkeypatch.setattr(decoder, "traces", lambda prefixes, settings: traces(prefixes, settings)[:-1])
    with pytest.raises(ValueError, match="shorter"):
        generate_traces(decoder, builder, read_rows(DOLCI, limit=3), "phase_b", tmp_path / "t.jsonl", SETTINGS, 512)
    assert not list((tmp_path / "t.jsonl.parts").glob("part-*.json"))


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
    layout = RowLayout(sequence_len=512, m_max=10, cot_keep="end")
    with pytest.raises(ValueError, match="row broken-7: last message must be the assistant's"):
        generate_traces(decoder, builder, rows, "phase_a", tmp_path / "x.jsonl", SETTINGS, 512, layout)
    summary = generate_traces(
        decoder, builder, rows, "phase_a", tmp_path / "y.jsonl", SETTINGS, 512, layout, skip_bad_rows=True
    )
    assert summary.skipped_bad_rows == 1 and summary.skipped_kinds == {"role": 1}
    assert len(read_jsonl(tmp_path / "y.jsonl")) == 2
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
    counts as the transformers backend (Phase A, CoTs cut to the training sequence_len)."""
    rows = check_output(
        vllm_run["out"],
        [f"dolci-tiny-{i:03d}" for i in range(VLLM_GENERATE["limit"])],
        TraceSettings(m_min=VLLM_GENERATE["m_min"], m_max=VLLM_GENERATE["m_max"]),
    )
    assert all(r["prefix_tokens"] + VLLM_GENERATE["m_max"] + 1 <= VLLM_GENERATE["max_model_len"] for r in rows)
    cut = [r for r in rows if r["cot_cut"]]
    assert cut and f"{len(cut)} CoTs cut as training cuts them" in vllm_run["generate_summary"]
