"""The toy task (abscot_plugin.testing.toy): deterministic data in the pipeline's formats, prompts equal to
the evaluation's, gold answers scored 100 % by the lm-eval tasks' scorer, configs/runs/toy.yml
planned on the task's files, clear errors on bad arguments, the study's trace statistics and
probe scoring, and one short round of the task through orchestrate.py. The study itself (real
budgets) runs from studies/toy/study.py, not in CI."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from support import ROOT, offline_env, read_jsonl

from abscot_plugin.core.prompts import math_messages
from abscot_plugin.core.rows import parse_chat_row
from abscot_plugin.core.traces import load_trace_file
from abscot_plugin.eval.scoring import score_answer
from abscot_plugin.testing import toy
from abscot_plugin.tokens.tokenization import prompt_ids


def test_problem_states_cot_answer_and_text_round_trip():
    problem = toy.Problem(((1, 3), (2, 4), (1, 2)))  # the module docstring's example
    assert problem.states() == ["3214", "3412", "3421"]
    assert problem.text() == "Swap the values in 1234: a13 b24 c12."
    assert problem.cot() == "a13 3214\nb24 3412\nc12 3421"
    assert problem.boxed() == "\\boxed{3421}"
    # k swaps reach exactly the arrangements of k's parity: 12 of 24 (the chance level is 1/12)
    for k in (3, 4):
        reached = {toy.Problem(swaps).answer for swaps in itertools.product(toy.SWAPS, repeat=k)}
        assert len(reached) == round(1 / toy.CHANCE) == 12
    assert problem.oracle_trace() == "<TOKEN_O><TOKEN_Q><TOKEN_R>"  # 3214, 3412, 3421: STATES 14, 16, 17
    assert toy.Problem.from_text(problem.text()) == problem
    for bad in ("Swap the values in 1234: a13 b25.", "Swap the values in 1234: b13.", "What is 2+2?"):
        with pytest.raises(ValueError):
            toy.Problem.from_text(bad)
    with pytest.raises(ValueError, match="pairs a < b"):
        toy.Problem(((3, 1),))


def test_data_is_deterministic_disjoint_and_in_the_pipeline_formats(tmp_path):
    sizes = {"train": 60, "valid": 10, "test": 10}
    files = toy.write_data(tmp_path / "a", 5, sizes, seed=3)
    again = toy.write_data(tmp_path / "b", 5, sizes, seed=3)
    other = toy.write_data(tmp_path / "c", 5, sizes, seed=4)
    for name in ("dolci", "oracle", "valid", "test"):
        assert files[name].read_bytes() == again[name].read_bytes()
        assert files[name].read_bytes() != other[name].read_bytes()
    # a split's problems do not depend on how many later splits draw
    assert toy.splits(5, {"test": 10}, 3)["test"] == toy.splits(5, sizes, 3)["test"]

    dolci, test = read_jsonl(files["dolci"]), read_jsonl(files["test"])
    train_texts = set()
    for row in dolci:
        parsed = parse_chat_row(row, row["id"])
        problem = toy.Problem.from_text(parsed.messages[-1]["content"])
        assert parsed.cot == problem.cot() and parsed.answer == problem.boxed()
        assert parsed.messages == math_messages(problem.text())  # the evaluation's system prompt
        train_texts.add(problem.text())
    assert len(train_texts) == 60 and len({r["id"] for r in dolci}) == 60
    held_out = {d["problem"] for d in test} | {d["problem"] for d in read_jsonl(files["valid"])}
    assert len(held_out) == 20 and not held_out & train_texts
    for doc in test:  # the project's scorer reads the boxed arrangement as the gold answer
        assert score_answer(toy.Problem.from_text(doc["problem"]).boxed(), doc["answer"]).correct
        assert not score_answer("\\boxed{1234}", "4321").correct
    # the ideal traces are a trace file the Phase B format reads: one symbol per swap, every row
    traces = load_trace_file(files["oracle"], 64, m_max=5)
    assert set(traces) == {r["id"] for r in dolci} and all(t.count("<TOKEN_") == 5 for t in traces.values())


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> Path:
    return toy.build_model(tmp_path_factory.mktemp("toy") / "init")


def test_toy_model_and_sft_rows_match_the_evaluation_prompt(tmp_path, toy_model):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_model)
    rows = AutoConfig.from_pretrained(toy_model).vocab_size
    assert len(tok) + 66 <= rows  # V_abs lands in existing rows
    assert tok.convert_ids_to_tokens(tok("1234", add_special_tokens=False)["input_ids"]) == list("1234")
    assert [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<think>")] == [1, 2, 3]
    files = toy.write_data(tmp_path, 8, {"train": 4, "test": 2}, tokenizer=toy_model)
    for kind, with_cot in (("verbal", True), ("nocot", False)):
        for sft, row in zip(read_jsonl(files[kind]), read_jsonl(files["dolci"]), strict=True):
            prompt, target = sft["segments"]
            problem = toy.Problem.from_text(row["messages"][1]["content"])
            # axolotl's input_output tokenises each segment as text; the eval builds prompt ids
            assert tok(prompt["text"], add_special_tokens=False)["input_ids"] == prompt_ids(
                tok, math_messages(problem.text()), row["id"]
            )
            assert not prompt["label"] and target["label"]
            assert target["text"] == (problem.cot() + "\n" if with_cot else "") + problem.boxed() + "<|im_end|>"


def test_the_tasks_scorer_scores_the_gold_answers_100_percent(tmp_path):
    """Through eval_tasks/utils.py as lm-eval calls it: the MATH-500 docs, the filter that scores a
    decode record, the per-sample metrics."""
    from abscot_plugin.eval.scoring import DecodeRecord
    from eval_tasks import utils

    files = toy.write_data(tmp_path, 6, {"train": 4, "test": 30}, seed=1)
    docs = utils.process_math500(
        utils.load_docs("unused", "test", "math500_file", math500_file=str(files["test"]))["test"]
    )
    problems = [toy.Problem.from_text(d["problem"]) for d in docs]

    def accuracy(answers: list[str]) -> float:
        resps = [[DecodeRecord("verbal", "", 0, False, text, 3, False).to_json()] for text in answers]
        scored = utils.score_responses(resps, list(docs))
        return sum(utils.process_results(d, s)["accuracy"] for d, s in zip(docs, scored, strict=True)) / len(docs)

    assert accuracy([p.boxed() for p in problems]) == 1.0
    assert accuracy(["\\boxed{1234}"] * len(docs)) == sum(p.answer == "1234" for p in problems) / len(docs)


def write_toy_run_config(tmp_path: Path, model: Path, data: dict[str, Path], num_rows: int, change=None) -> Path:
    """configs/runs/toy.yml pointed at ``model`` and the generated ``data`` (``num_rows`` a round),
    run in ``tmp_path / "run"``, after ``change(cfg)``; written to ``tmp_path / "toy.yml"``."""
    cfg = yaml.safe_load((ROOT / "configs" / "runs" / "toy.yml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"), base_model=str(model))
    cfg["data"].update(path=str(data["dolci"]), num_rows=num_rows)
    cfg["evaluation"]["data_files"] = {"math500_file": str(data["test"])}
    if change is not None:
        change(cfg)
    path = tmp_path / "toy.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_toy_run_config_plans_on_the_tasks_files(tmp_path, toy_model):
    """configs/runs/toy.yml, pointed at a generated data set: T rounds of Phase A/B with the
    shipped toy phase configs, traces and evaluation as configured (no training)."""
    from abscot_plugin.orchestration.plan import build_plan
    from abscot_plugin.orchestration.run_config import load_run_config

    data = toy.write_data(tmp_path / "data", 8, {"train": 40, "test": 4})
    path = write_toy_run_config(tmp_path, toy_model, data, num_rows=10)
    plan = build_plan(load_run_config(path))
    names = [s.name for s in plan.stages]
    assert names[0] == "eval_base" and names[-1] == "eval"
    assert names.count("r3_b_train") == 1 and "r2_a_traces" in names
    traces = plan.stage("r1_b_traces").command
    assert traces[traces.index("--m-min") + 1] == "8" and traces[traces.index("--m-max") + 1] == "32"
    phase_a = plan.stage("r1_a_train").yaml
    assert phase_a["abscot_m_max"] == 32 and phase_a["datasets"][0]["type"] == "abscot_plugin.train.bottleneck"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "2", "--train", "100", "--valid", "0", "--test", "0"], "k=2 has 36 problems"),
        (["--k", "0"], "1..26 swaps"),
        (["--k", "27"], "1..26 swaps"),
        (["--train", "-1"], "must not be negative, got {'train': -1}"),
    ],
)
def test_bad_data_arguments_fail_with_one_clear_line(tmp_path, args, message):
    done = subprocess.run(
        [sys.executable, "-m", "abscot_plugin.testing.toy", "data", str(tmp_path), *args],
        cwd=ROOT,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_trace_statistics_of_the_study():
    from studies.toy.measure import entropy_bits, trace_stats

    assert entropy_bits(Counter("aabb")) == 1.0
    stats = trace_stats(["<TOKEN_A><TOKEN_B>", "<TOKEN_A><TOKEN_A><TOKEN_C><TOKEN_D>"], 64, 32)
    assert stats["trace_len"] == 3.0 and stats["trace_len_sd"] == 1.0 and stats["distinct"] == 1.0
    assert stats["symbol_entropy"] == pytest.approx(entropy_bits(Counter("AAABCD")))
    assert stats["collapsed"] == 0.0
    assert trace_stats(["<TOKEN_A>"] * 20, 64, 32)["collapsed"] == 1.0
    with pytest.raises(ValueError, match="no traces"):
        trace_stats([], 64, 32)


def test_oracle_agreement_reads_symbols_as_states():
    from abscot_plugin.eval.scoring import DecodeRecord
    from studies.toy.measure import oracle_agreement

    def record(trace: str, answer: str) -> DecodeRecord:
        return DecodeRecord("abstract", trace, trace.count("<"), False, answer, 7, False)

    problems = ["Swap the values in 1234: a13 b24."] * 3  # ideal trace <TOKEN_O><TOKEN_Q>: 3214, 3412
    decoded = [
        record("<TOKEN_O><TOKEN_A>", "\\boxed{1234}"),  # half right; the answer reads the last symbol
        record("<TOKEN_O><TOKEN_Q><TOKEN_BL>", "\\boxed{3412}"),  # both right; last symbol names no state
        record("<TOKEN_A>", "\\boxed{3412}"),  # none right; answer ignores the trace
    ]
    got = oracle_agreement(problems, decoded, 64, 32)
    assert got == {"oracle_symbols_right": pytest.approx((0.5 + 1 + 0) / 3), "answer_reads_trace": pytest.approx(1 / 3)}


def test_probe_scores_an_answer_by_its_teacher_forced_argmax_in_a_padded_batch(toy_model):
    """studies/toy/probe.py's ``answer_right``: a row is right when each answer label is the argmax of
    the position before it (here, the model's own predictions, computed row by row without padding),
    the same in a padded batch of a Phase A row (bottleneck mask) and a shorter Phase B row; one
    changed label fails only its row."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from abscot_plugin.args import RowLayout
    from abscot_plugin.core.choices import Phase
    from abscot_plugin.tokens import segments as seg
    from abscot_plugin.tokens.segments import bottleneck_attention_mask
    from abscot_plugin.tokens.sequences import SequenceBuilder
    from abscot_plugin.tokens.vocab import AbstractVocab, add_abstract_tokens
    from studies.toy.probe import answer_right

    tok = AutoTokenizer.from_pretrained(toy_model)
    add_abstract_tokens(tok)
    model = AutoModelForCausalLM.from_pretrained(toy_model, attn_implementation="sdpa", dtype=torch.float32).eval()
    builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok))
    problems = [toy.Problem(((1, 3), (2, 4), (1, 2))), toy.Problem(((1, 3),))]
    rows = [parse_chat_row(toy.dolci_row(p, f"r{i}"), f"r{i}") for i, p in enumerate(problems)]
    examples = [
        builder.example(rows[0], builder.vocab.symbol_ids[:3], Phase.A, RowLayout(256, 32, "end")),
        builder.example(rows[1], builder.vocab.symbol_ids[:1], Phase.B, RowLayout(256, 32, "end")),
    ]
    assert len(examples[0].input_ids) != len(examples[1].input_ids)
    relabelled = []
    for e in examples:
        segments = torch.tensor([e.segment_ids])
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([e.input_ids]),
                attention_mask=bottleneck_attention_mask(model.config, segments, torch.float32),
            ).logits[0]
        labels = [
            int(logits[i - 1].argmax()) if s == seg.ANSWER else lab
            for i, (lab, s) in enumerate(zip(e.labels, e.segment_ids, strict=True))
        ]
        relabelled.append(dataclasses.replace(e, labels=labels))
    assert answer_right(model, relabelled) == [True, True]
    last = max(i for i, s in enumerate(relabelled[0].segment_ids) if s == seg.ANSWER)
    wrong = list(relabelled[0].labels)
    wrong[last] = (wrong[last] + 1) % len(tok)
    assert answer_right(model, [dataclasses.replace(relabelled[0], labels=wrong), relabelled[1]]) == [False, True]


@pytest.mark.slow
def test_one_short_round_on_the_task(tmp_path, toy_model):
    """configs/runs/toy.yml as shipped but for its size: one round of 2 optimizer steps a phase on
    16 toy rows from the random toy model, through orchestrate.py (Phase A with the shipped toy
    config, traces of 8..32 symbols from the toy prompts, Phase B, the two-stage evaluation of 4
    test problems with the lm-eval task and scorer)."""
    import json

    data = toy.write_data(tmp_path / "data", 8, {"train": 16, "test": 4})

    def shrink(cfg: dict) -> None:
        cfg["rounds"] = 1
        cfg["training"]["overrides"] = {"max_steps": 2, "micro_batch_size": 4, "warmup_steps": 0, "logging_steps": 1}
        cfg["evaluation"].pop("baseline_tasks")
        cfg["evaluation"]["limit"] = 4

    path = write_toy_run_config(tmp_path, toy_model, data, num_rows=16, change=shrink)
    done = subprocess.run(
        [sys.executable, "orchestrate.py", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=offline_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    for name in ("r1_a_train", "r1_b_train"):
        assert manifest[name]["metrics"]["steps"] == 2
    traces = read_jsonl(run / "round1" / "phase_b" / "traces.jsonl")
    assert sorted(r["id"] for r in traces) == [f"toy-train-{i:06d}" for i in range(16)]
    assert all(8 <= r["length"] <= 32 for r in traces)
    (samples,) = (run / "eval" / "final").rglob("samples_math500_abscot_*.jsonl")
    docs = [s["doc"] for s in read_jsonl(samples)]
    assert [d["unique_id"] for d in docs] == [r["unique_id"] for r in read_jsonl(data["test"])]
    for sample in read_jsonl(samples):
        record = json.loads(sample["resps"][0][0])
        assert 8 <= record["abstract_tokens"] <= 32 and record["answer_tokens"] <= 96
