"""Phase A / Phase B dataset formats: layout, labels, truncation, traces, bad input, and text that
spells token names (plain text, never those ids). Tests about token ids or counts run on the tiny
tokenizer and on Qwen3's real one (``any_builder``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from support import batch_of, make_cfg, strategy

from abscot_plugin.args import RowLayout
from abscot_plugin.core.choices import Phase
from abscot_plugin.core.rows import BadRowError, parse_chat_row
from abscot_plugin.core.symbols import symbol_names
from abscot_plugin.core.traces import parse_trace, random_trace
from abscot_plugin.tokens import segments as seg
from abscot_plugin.tokens.sequences import IGNORE
from abscot_plugin.tokens.vocab import AbstractVocab


def runs(segments):
    """Collapse a segment column into its run order, e.g. [0, 1, 2, 3]."""
    out = []
    for s in segments:
        if not out or out[-1] != s:
            out.append(s)
    return out


def test_phase_a_layout_and_labels(plugin_active, any_builder, dolci_rows):
    builder, tok, vocab = any_builder, any_builder.tok, any_builder.vocab
    out = strategy(tok, sequence_len=4096).tokenize_prompt(batch_of(dolci_rows[:4]))
    for row, ids, labels, segs in zip(dolci_rows[:4], out["input_ids"], out["labels"], out["segment_ids"], strict=True):
        assert len(ids) == len(labels) == len(segs)
        assert runs(segs) == [seg.PROMPT, seg.COT, seg.ABSTRACT, seg.ANSWER]
        parsed = parse_chat_row(row, row["id"])
        # the prefix a teacher decodes from is exactly the training sequence's prefix
        prefix, cut = builder.phase_a_prefix(parsed, RowLayout(4096, 128, "end"))
        assert cut == 0 and ids[: len(prefix)] == prefix
        begin = ids.index(vocab.begin_id)
        end = ids.index(vocab.end_id)
        assert segs[begin] == seg.ABSTRACT and segs[end] == seg.ABSTRACT
        symbols = ids[begin + 1 : end]
        assert 1 <= len(symbols) <= 128 and set(symbols) <= set(vocab.symbol_ids)
        # loss exactly on z, <endabstract> and the answer (incl. end of turn); never x, c, <begin>
        labelled = [i for i, lab in enumerate(labels) if lab != IGNORE]
        assert labelled == list(range(begin + 1, len(ids)))
        assert all(labels[i] == ids[i] for i in labelled)
        assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        answer_text = tok.decode([i for i, s in zip(ids, segs, strict=True) if s == seg.ANSWER])
        assert parsed.answer in answer_text and "\\boxed" in answer_text
        cot_text = tok.decode([i for i, s in zip(ids, segs, strict=True) if s == seg.COT])
        assert cot_text.strip() == parsed.cot


def test_split_layout_is_the_one_pass_row_cut_in_two(plugin_active, any_builder, dolci_rows):
    """``abscot_phase_a_layout: split`` (ablation (a) of the toy study), through ``datasets.map`` in
    two workers: two rows per input row; pass 1 is the one-pass row up to its answer, pass 2 is it
    without the CoT, and every one-pass label is trained exactly once."""
    from datasets import Dataset

    tok, rows = any_builder.tok, dolci_rows[:4]
    one = strategy(tok, sequence_len=4096).tokenize_prompt(batch_of(rows))
    split = strategy(tok, sequence_len=4096, abscot_phase_a_layout="split").wrap_dataset(
        Dataset.from_dict(batch_of(rows)), process_count=2
    )
    assert len(split) == 2 * len(rows)
    for i, (ids, labels, segs) in enumerate(zip(one["input_ids"], one["labels"], one["segment_ids"], strict=True)):
        first, second = split[2 * i], split[2 * i + 1]
        answer_at = segs.index(seg.ANSWER)
        assert first["input_ids"] == ids[:answer_at] and first["labels"] == labels[:answer_at]
        assert runs(first["segment_ids"]) == [seg.PROMPT, seg.COT, seg.ABSTRACT]
        assert runs(second["segment_ids"]) == [seg.PROMPT, seg.ABSTRACT, seg.ANSWER]
        assert second["input_ids"] == [t for t, s in zip(ids, segs, strict=True) if s != seg.COT]
        assert second["abscot_cot_cut"] == 0
        second_labelled = [s for lab, s in zip(second["labels"], second["segment_ids"], strict=True) if lab != IGNORE]
        assert set(second_labelled) == {seg.ANSWER}
        trained = [lab for lab in first["labels"] + second["labels"] if lab != IGNORE]
        assert trained == [lab for lab in labels if lab != IGNORE]


def test_only_the_one_pass_layout_lets_the_cot_reach_the_answer(plugin_active, tiny_tokenizer, dolci_rows):
    """What ablation (a) compares: under the one-pass bottleneck mask the answer's loss has a gradient
    with respect to the CoT's embeddings (through the hidden states at z, never by attending to c);
    under the split nothing of c reaches the answer's loss."""
    import torch
    from transformers import Qwen3ForCausalLM

    from abscot_plugin.testing.fixtures import tiny_config
    from abscot_plugin.tokens.segments import bottleneck_attention_mask

    torch.manual_seed(0)
    config = tiny_config(len(tiny_tokenizer))
    config._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(config)
    grads = {}
    for layout in ("one_pass", "split"):
        out = strategy(tiny_tokenizer, sequence_len=4096, abscot_phase_a_layout=layout).tokenize_prompt(
            batch_of(dolci_rows[:2])
        )
        grads[layout] = 0.0
        for ids, labels, segs in zip(out["input_ids"], out["labels"], out["segment_ids"], strict=True):
            answer_labels = [lab if s == seg.ANSWER else IGNORE for lab, s in zip(labels, segs, strict=True)]
            if all(lab == IGNORE for lab in answer_labels):
                continue  # pass 1 of the split: no answer in the row
            segments = torch.tensor([segs])
            embeds = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_()
            mask = bottleneck_attention_mask(model.config, segments, torch.float32)
            model(inputs_embeds=embeds, attention_mask=mask, labels=torch.tensor([answer_labels])).loss.backward()
            grads[layout] += embeds.grad[segments == seg.COT].abs().sum().item()
    assert grads["one_pass"] > 0 and grads["split"] == 0


def test_phase_b_has_no_cot_and_no_segment_column(plugin_active, any_builder, dolci_rows, tmp_path):
    builder, tok, vocab = any_builder, any_builder.tok, any_builder.vocab
    traces = tmp_path / "t.jsonl"
    names = symbol_names(64)
    with traces.open("w") as fh:
        for i, row in enumerate(dolci_rows[:3]):
            fh.write(json.dumps({"id": row["id"], "trace": "".join(names[i : i + 20])}) + "\n")
    out = strategy(tok, Phase.B, abscot_trace_file=str(traces)).tokenize_prompt(batch_of(dolci_rows[:3]))
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    for i, (row, ids, labels) in enumerate(zip(dolci_rows[:3], out["input_ids"], out["labels"], strict=True)):
        prefix = builder.phase_b_prefix(parse_chat_row(row, row["id"]))
        assert ids[: len(prefix)] == prefix
        begin = ids.index(vocab.begin_id)
        assert ids[begin + 1 : begin + 21] == tok.convert_tokens_to_ids(names[i : i + 20])
        assert ids[begin + 21] == vocab.end_id
        assert [j for j, lab in enumerate(labels) if lab != IGNORE] == list(range(begin + 1, len(ids)))


def test_phase_b_row_without_trace_is_an_error(plugin_active, tiny_tokenizer, dolci_rows, tmp_path):
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"id": "someone-else", "trace": "<TOKEN_A>"}) + "\n")
    strat = strategy(tiny_tokenizer, Phase.B, abscot_trace_file=str(traces))
    with pytest.raises(ValueError, match="dolci-tiny-000.*no trace for this id"):
        strat.tokenize_prompt(batch_of(dolci_rows[:1]))


def test_rows_without_id_get_the_same_name_in_generation_and_training(
    plugin_active, tiny_tokenizer, vocab, dolci_rows, tmp_path
):
    """A trace generated for an id-less row (named by rows.read_rows) is found by Phase B
    training, also after ``datasets`` adds a null ``id`` column for rows that lack one."""
    import datasets

    from abscot_plugin.core.rows import read_rows

    rows = [dict(dolci_rows[0])] + [{k: v for k, v in r.items() if k != "id"} for r in dolci_rows[1:3]]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    names = [name for name, _ in read_rows(data)]
    assert names[0] == "dolci-tiny-000" and all(n.startswith("sha1:") for n in names[1:])
    assert len(set(names)) == 3
    traces = tmp_path / "t.jsonl"
    trace_names = symbol_names(64)
    traces.write_text(
        "".join(json.dumps({"id": n, "trace": "".join(trace_names[i : i + 4])}) + "\n" for i, n in enumerate(names))
    )
    loaded = datasets.load_dataset("json", data_files=str(data), split="train")
    assert loaded["id"][1] is None  # what axolotl's loader hands the strategy
    out = strategy(tiny_tokenizer, Phase.B, abscot_trace_file=str(traces)).tokenize_prompt(loaded.to_dict())
    for i, ids in enumerate(out["input_ids"]):
        begin = ids.index(vocab.begin_id)
        assert ids[begin + 1 : begin + 5] == tiny_tokenizer.convert_tokens_to_ids(trace_names[i : i + 4])


@pytest.mark.parametrize("keep", ["end", "start", "both_ends"])
def test_cot_truncation_keeps_trace_and_answer(plugin_active, any_builder, dolci_rows, keep):
    """Only the CoT is cut, to the room left by x, y and a full m_max trace (+ 2 delimiters)."""
    row = dolci_rows[0]  # the long CoT (tiny: 461 tokens, Qwen3: 462); its random trace has 110 symbols
    full = strategy(any_builder.tok, sequence_len=4096).tokenize_prompt(batch_of([row]))
    short = strategy(any_builder.tok, sequence_len=300, abscot_cot_keep=keep).tokenize_prompt(batch_of([row]))
    assert full["abscot_cot_cut"][0] == 0

    def part(out, code):
        return [i for i, s in zip(out["input_ids"][0], out["segment_ids"][0], strict=True) if s == code]

    for code in (seg.PROMPT, seg.ABSTRACT, seg.ANSWER):
        assert part(short, code) == part(full, code)
    full_cot, short_cot = part(full, seg.COT), part(short, seg.COT)
    room = 300 - len(part(full, seg.PROMPT)) - len(part(full, seg.ANSWER)) - (128 + 2)
    cut = short["abscot_cot_cut"][0]
    assert len(short_cot) == room and cut == len(full_cot) - room > 0
    trace_len = len(part(full, seg.ABSTRACT)) - 2
    assert trace_len < 128 and len(short["input_ids"][0]) == 300 - (128 - trace_len)  # unused room stays free
    if keep == "end":
        assert short_cot == full_cot[cut:]
    elif keep == "start":
        assert short_cot == full_cot[: len(full_cot) - cut]
    else:
        head = len(short_cot) // 2
        assert short_cot == full_cot[:head] + full_cot[head + cut :]


@pytest.mark.parametrize("keep", ["end", "start", "both_ends"])
def test_phase_a_prefix_is_the_training_prefix_when_the_cot_is_cut(any_builder, dolci_rows, keep):
    """The teacher's prefix (generation) is exactly the training example's ids up to
    <beginabstract>, whatever the trace length, with the whole prompt x (chat header) in front."""
    builder, tok, vocab = any_builder, any_builder.tok, any_builder.vocab
    parsed = parse_chat_row(dolci_rows[0], "dolci-tiny-000")  # the long CoT
    layout = RowLayout(sequence_len=200, m_max=32, cot_keep=keep)
    x = builder.prompt_ids(parsed)
    prefix, cut = builder.phase_a_prefix(parsed, layout)
    assert prefix[: len(x)] == x and tok.decode(prefix[:3]).startswith("<|im_start|>")
    assert cut > 0 and len(prefix) == len(x) + len(builder.cot_ids(parsed)) - cut + 1
    for trace_len in (1, layout.m_max // 2, layout.m_max):
        ex = builder.example(parsed, list(vocab.symbol_ids[:trace_len]), Phase.A, layout)
        assert ex.input_ids[: len(prefix)] == prefix and ex.cot_cut == cut
        assert ex.input_ids[len(prefix) - 1] == vocab.begin_id and len(ex.input_ids) <= layout.sequence_len
    with pytest.raises(BadRowError, match="row dolci-tiny-000: .*sequence_len=100") as info:
        builder.phase_a_prefix(parsed, replace(layout, sequence_len=100))  # x + y + m_max + 2 leave no CoT room
    assert info.value.kind == "too_long"


def test_row_that_cannot_fit_is_an_error_not_a_silent_cut(plugin_active, any_builder, dolci_rows):
    with pytest.raises(ValueError, match="dolci-tiny-000.*sequence_len=40"):
        strategy(any_builder.tok, sequence_len=40).tokenize_prompt(batch_of(dolci_rows[:1]))


BAD_ROWS = [
    (
        {"id": "r1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "no think"}]},
        "no <think>",
    ),
    (
        {
            "id": "r2",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>c</think>  "}],
        },
        "empty answer",
    ),
    ({"id": "r3", "messages": "not a list"}, "non-empty list"),
    (
        {"id": "r4", "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]},
        "string 'content'",
    ),
    (
        {
            "id": "r5",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>c</think>a"}],
            "abstract_trace": "<TOKEN_A><TOKEN_ZZ>",
        },
        "outside V_abs",
    ),
    (
        {
            "id": "r6",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>c</think>a"}],
            "abstract_trace": "<TOKEN_A>" * 129,
        },
        "allowed 1..128",
    ),
    (
        {
            "id": "r7",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>c</think>a"}],
            "abstract_trace": "<TOKEN_A> hello",
        },
        "not an abstract symbol",
    ),
    (
        {
            "id": "r8",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>c, then a"}],
        },
        "<think> without a closing </think>",
    ),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS, ids=[r["id"] for r, _ in BAD_ROWS])
def test_bad_rows_fail_with_the_row_named(plugin_active, tiny_tokenizer, row, reason):
    with pytest.raises(ValueError) as info:
        strategy(tiny_tokenizer).tokenize_prompt(batch_of([row]))
    assert f"row {row['id']}" in str(info.value) and reason in str(info.value)


def test_bad_rows_are_counted_when_skipping(plugin_active, tiny_tokenizer, dolci_rows, caplog):
    rows = dolci_rows[:3] + [r for r, _ in BAD_ROWS]
    caplog.set_level("WARNING")
    out = strategy(tiny_tokenizer, abscot_skip_bad_rows=True).tokenize_prompt(batch_of(rows))
    assert len(out["input_ids"]) == 3
    assert "skipped 8 of 11 rows" in caplog.text and "row r1" in caplog.text
    # grouped by the error's short kind, not by its message text
    assert "3× bad_trace" in caplog.text and "1× no_think" in caplog.text and "1× bad_think" in caplog.text


def test_over_long_rows_are_one_kind_in_the_skip_log(plugin_active, any_builder, dolci_rows, caplog):
    caplog.set_level("WARNING")
    out = strategy(any_builder.tok, sequence_len=40, abscot_skip_bad_rows=True).tokenize_prompt(
        batch_of(dolci_rows[:4])
    )
    assert out["input_ids"] == [] and "skipped 4 of 4 rows in this batch (4× too_long)" in caplog.text


def test_strategy_refuses_to_run_without_the_plugin(tiny_tokenizer):
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    try:
        with pytest.raises(RuntimeError, match="need the abscot plugin"):
            strategy(tiny_tokenizer)
    finally:
        manager.plugins.update(saved)


def test_random_traces_follow_the_step_rule_and_are_reproducible():
    lengths = [10, 3, 1, 40]
    a = random_trace(lengths, "row-1", 64, seed=5)
    assert a == random_trace(lengths, "row-1", 64, seed=5)
    assert a != random_trace(lengths, "row-2", 64, seed=5)
    assert 4 <= len(a) <= 5 + 1 + 1 + 20
    parse_trace("".join(a), 64)
    # per-step counts are U{1..max(1,|l|//2)}: over many rows every count stays inside the bound
    for r in range(200):
        assert 1 <= len(random_trace([2], f"r{r}", 64)) <= 1
        assert 1 <= len(random_trace([9], f"r{r}", 64)) <= 4
    assert len(random_trace([400] * 10, "long", 64, m_max=128)) == 128


BROKEN_THINK = [
    ("<think>c, and no end: a", "<think> without a closing </think>"),
    ("a, then c</think>", "</think> without <think>"),
    ("a first <think>c</think>", "not a <think>…</think> block at its start"),
]


@pytest.mark.parametrize("phase", list(Phase), ids=str)
@pytest.mark.parametrize("reply,reason", BROKEN_THINK, ids=["open", "close", "late"])
def test_broken_think_block_is_a_bad_row_in_both_phases(plugin_active, tiny_tokenizer, phase, reply, reason):
    """Phase B used to take such a reply, think tag and all, as the answer y."""
    row = {
        "id": "t1",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}],
        "abstract_trace": "<TOKEN_A><TOKEN_B>",
    }
    with pytest.raises(ValueError, match=f"row t1: .*{reason}"):
        strategy(tiny_tokenizer, phase).tokenize_prompt(batch_of([row]))
    with pytest.raises(BadRowError) as info:
        parse_chat_row(row, "t1", need_cot=phase.has_cot)
    assert info.value.kind == "bad_think"


def _literal_row(names: str, cot_names: str) -> dict:
    """A row whose system prompt, user prompt and answer spell token ``names``, and its CoT
    ``cot_names`` (a CoT cannot spell </think>: that ends it)."""
    return {
        "id": "lit",
        "messages": [
            {"role": "system", "content": f"Never write {names} yourself."},
            {"role": "user", "content": f"Is {names} a token? Say yes."},
            {
                "role": "assistant",
                "content": f"<think>The CoT spells {cot_names} as text.</think>Text: {names} \\boxed{{1}}",
            },
        ],
        "abstract_trace": "<TOKEN_C><TOKEN_D><TOKEN_E>",
    }


@pytest.mark.parametrize("phase", list(Phase), ids=str)
def test_literal_think_tags_in_rows_are_trained_as_plain_text(plugin_active, qwen3_extended, phase):
    """Real Qwen3 tokenizer, where <think>/</think> are added but not special tokens: a prompt, CoT
    and answer that spell them (and <|im_end|>) never yield their ids in input_ids or labels; the
    only added ids are the template's, <beginabstract> z <endabstract> and the final <|im_end|>."""
    tok = qwen3_extended
    vocab = AbstractVocab.from_tokenizer(tok)
    row = _literal_row("<think>, </think> and <|im_end|>", cot_names="<think> and <|im_end|>")
    out = strategy(tok, phase).tokenize_prompt(batch_of([row]))
    ids, labels = out["input_ids"][0], out["labels"][0]
    names = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    im_start, im_end, think, end_think = tok.convert_tokens_to_ids(names)
    trace = tok.convert_tokens_to_ids(["<TOKEN_C>", "<TOKEN_D>", "<TOKEN_E>"])
    template = [im_start, im_end, im_start, im_end, im_start, think, end_think]  # system, user, generation prompt
    added = set(tok.added_tokens_decoder)
    assert [i for i in labels if i in added] == [*trace, vocab.end_id, im_end]
    assert [i for i in ids if i in added] == template + [vocab.begin_id, *trace, vocab.end_id, im_end]
    # the literals are there, as text
    begin = ids.index(vocab.begin_id)
    answer = tok.decode(ids[ids.index(vocab.end_id) + 1 : -1])
    assert answer == "\nText: <think>, </think> and <|im_end|> \\boxed{1}"
    assert "Is <think>, </think> and <|im_end|> a token?" in tok.decode(ids[:begin])
    if phase.has_cot:
        assert runs(out["segment_ids"][0]) == [seg.PROMPT, seg.COT, seg.ABSTRACT, seg.ANSWER]
        assert "The CoT spells <think> and <|im_end|> as text." in tok.decode(ids[:begin])


def test_row_that_mentions_abstract_tokens_is_trained_normally(plugin_active, any_builder):
    """Such rows used to be refused ("reserved marker"); their text is plain, so they are trained."""
    builder, vocab = any_builder, any_builder.vocab
    row = _literal_row("<TOKEN_A>, <beginabstract> and <endabstract>", cot_names="<TOKEN_B> and <endabstract>")
    out = strategy(builder.tok).tokenize_prompt(batch_of([row]))
    (ids,), (segs,) = out["input_ids"], out["segment_ids"]
    parsed = parse_chat_row(row, "lit")
    assert [i for i, s in zip(ids, segs, strict=True) if s == seg.PROMPT] == builder.prompt_ids(parsed)
    assert [i for i, s in zip(ids, segs, strict=True) if s == seg.COT] == builder.cot_ids(parsed)
    assert [i for i in ids if i in set(vocab.all_ids)] == [vocab.begin_id, *vocab.symbol_ids[2:5], vocab.end_id]


def spread_bad_rows(dolci_rows):
    """6 good rows and 6 bad ones of three kinds, bad rows in both halves (both map workers)."""
    bad = {r["id"]: r for r, _ in BAD_ROWS}
    no_think_2 = dict(bad["r1"], id="r1b")
    order = [bad["r1"], 0, 1, bad["r5"], 2, bad["r2"], 3, bad["r6"], 4, no_think_2, 5, bad["r7"]]
    return [dolci_rows[i] if isinstance(i, int) else i for i in order]


SPREAD_TOTAL = "abscot bottleneck data: skipped 6 of 12 rows: 3× bad_trace, 2× no_think, 1× empty_answer"


def test_skips_are_totalled_over_map_workers_and_kept_with_the_data(
    plugin_active, tiny_tokenizer, dolci_rows, caplog, tmp_path
):
    """Two map processes count their batches; the total travels with the data through axolotl's
    steps (shuffle, filter, split) and its prepared-dataset cache, and is logged once."""
    from datasets import Dataset, load_from_disk

    from abscot_plugin.train.data_counts import DataCounts, recorded
    from abscot_plugin.train.dataset_strategy import log_data_summary

    caplog.set_level("DEBUG")
    strat = strategy(tiny_tokenizer, abscot_skip_bad_rows=True)
    out = strat.wrap_dataset(Dataset.from_dict(batch_of(spread_bad_rows(dolci_rows))), process_count=2)
    assert len(out) == 6
    expected = DataCounts("bottleneck", 12, {"bad_trace": 3, "no_think": 2, "empty_answer": 1})
    assert recorded(out) == {"bottleneck": expected}
    assert SPREAD_TOTAL.replace("data:", "data from the dataset:") in caplog.text

    prepared = out.shuffle(seed=0).filter(lambda r: len(r["input_ids"]) > 0).train_test_split(test_size=2)
    prepared.save_to_disk(str(tmp_path / "prepared"))
    caplog.clear()
    caplog.set_level("INFO")
    log_data_summary(make_cfg(abscot_skip_bad_rows=True), load_from_disk(str(tmp_path / "prepared"))["train"])
    assert caplog.text.count("skipped") == 1 and SPREAD_TOTAL in caplog.text
    assert "abscot bottleneck data: 4 rows; CoT cut to fit sequence_len in" in caplog.text


def test_preprocess_logs_each_dataset_total(plugin_active, tiny_tokenizer, dolci_rows, caplog):
    """`axolotl preprocess` has no trainer to report: the strategy logs its dataset's total."""
    from datasets import Dataset

    caplog.set_level("INFO")
    strat = strategy(tiny_tokenizer, abscot_skip_bad_rows=True, is_preprocess=True)
    strat.wrap_dataset(Dataset.from_dict(batch_of(spread_bad_rows(dolci_rows))))
    assert caplog.text.count("skipped") == 1
    assert SPREAD_TOTAL.replace("data:", "data from the dataset:") in caplog.text


def test_a_repeated_tokenisation_runs_its_batches_again(plugin_active, tiny_tokenizer, dolci_rows, tmp_path):
    """datasets would serve an identical map from its cache without running the batches (and so
    without counting them); each tokenisation's own counting folder keeps that from happening."""
    import datasets

    from abscot_plugin.train.data_counts import recorded

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in spread_bad_rows(dolci_rows)))
    loaded = datasets.load_dataset("json", data_files=str(data), split="train")
    for _ in range(2):
        out = strategy(tiny_tokenizer, abscot_skip_bad_rows=True).wrap_dataset(loaded)
        assert recorded(out)["bottleneck"].num_skipped == 6


def test_a_dataset_with_every_row_skipped_is_an_error(plugin_active, tiny_tokenizer, dolci_rows):
    from datasets import Dataset

    strat = strategy(tiny_tokenizer, sequence_len=40, abscot_skip_bad_rows=True)
    with pytest.raises(ValueError, match=r"every row of the dataset was skipped .*4× too_long"):
        strat.wrap_dataset(Dataset.from_dict(batch_of(dolci_rows[:4])))
