"""The toy task (abscot_plugin.toy): deterministic data in the pipeline's formats, prompts equal to
the evaluation's, the study's split-pass ablation layout, and one short warm-up round on the task
through orchestrate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support import ROOT, offline_env, read_jsonl

from abscot_plugin import segments as seg
from abscot_plugin import toy
from abscot_plugin.prompts import math_messages, parse_chat_row
from abscot_plugin.scoring import score_answer
from abscot_plugin.sequences import IGNORE
from abscot_plugin.tokenization import prompt_ids


def test_problem_states_cot_answer_and_text_round_trip():
    problem = toy.Problem(((1, 3), (2, 4), (1, 2)))  # the module docstring's example
    assert problem.states() == ["3214", "3412", "3421"]
    assert problem.text() == "Swap the values in 1234: a13 b24 c12."
    assert problem.cot() == "a13 3214\nb24 3412\nc12 3421"
    assert problem.boxed() == "\\boxed{3421}"
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
    for name in ("dolci", "valid", "test"):
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
                tok, math_messages(problem.text()), row["id"])
            assert not prompt["label"] and target["label"]
            assert target["text"] == (problem.cot() + "\n" if with_cot else "") + problem.boxed() + "<|im_end|>"


def test_split_ablation_drops_the_cot_from_the_answer_pass():
    from bench.toy.split import split_batch

    P, C, A, Y, PAD = seg.PROMPT, seg.COT, seg.ABSTRACT, seg.ANSWER, seg.PAD
    segments = torch.tensor([[P, P, C, C, A, A, A, Y, Y], [P, C, A, A, A, Y, Y, PAD, PAD]])
    ids = torch.tensor([[10, 11, 20, 21, 30, 31, 32, 40, 41], [12, 22, 30, 33, 32, 42, 43, 0, 0]])
    labels = torch.tensor([[IGNORE] * 5 + [31, 32, 40, 41], [IGNORE] * 3 + [33, 32, 42, 43, IGNORE, IGNORE]])
    first, second = split_batch(ids, labels, segments, pad_id=0)
    assert torch.equal(first["input_ids"], ids)
    assert first["attention_mask"].tolist() == [[1] * 9, [1] * 7 + [0, 0]]
    assert first["labels"].tolist() == [[IGNORE] * 5 + [31, 32, IGNORE, IGNORE], [IGNORE] * 3 + [33, 32] + [IGNORE] * 4]
    assert second["input_ids"].tolist() == [[10, 11, 30, 31, 32, 40, 41], [12, 30, 33, 32, 42, 43, 0]]
    assert second["attention_mask"].tolist() == [[1] * 7, [1] * 6 + [0]]
    assert second["labels"].tolist() == [[IGNORE] * 5 + [40, 41], [IGNORE] * 4 + [42, 43, IGNORE]]


@pytest.mark.slow
def test_one_round_on_the_toy_task_through_orchestrate(tmp_path, toy_model):
    """configs/runs/toy.yml at T=1 with tiny budgets, from a random toy model: Phase A, Phase B
    traces, Phase B and the abstract evaluation run on the task's files unchanged."""
    data = toy.write_data(tmp_path / "data", 8, {"train": 16, "test": 4})
    cfg = yaml.safe_load((ROOT / "configs" / "runs" / "toy.yml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"), base_model=str(toy_model), rounds=1)
    cfg["data"].update(path=str(data["dolci"]), num_rows=16)
    cfg["training"]["overrides"].update(max_steps=2, warmup_steps=1, micro_batch_size=8)
    cfg["evaluation"].update(baseline_tasks=[], data_files={"math500_file": str(data["test"])})
    config = tmp_path / "toy.yml"
    config.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "orchestrate.py", str(config)], cwd=ROOT, env=offline_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    run = tmp_path / "run"
    traces = read_jsonl(run / "round1" / "phase_b" / "traces.jsonl")
    assert len(traces) == 16 and all(8 <= t["length"] <= 32 for t in traces)
    (samples,) = (run / "eval" / "final").rglob("samples_math500_abscot_*.jsonl")
    for sample in read_jsonl(samples):
        record = json.loads(sample["resps"][0][0])
        assert 8 <= record["abstract_tokens"] <= 32
    assert "| math500_abscot | 4 |" in (run / "eval" / "report.md").read_text()
