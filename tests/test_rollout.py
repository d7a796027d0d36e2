"""RL rollouts (abscot_plugin.rollout) and the GRPO trainer's log-probabilities
(abscot_plugin.grpo_trainer): valid traces, the loss mask at the seams, and the trainer's
per-token log-probs equal to the sampler's, trace and answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from abscot_plugin.decode import HFDecoder, check_trace
from abscot_plugin.fixtures import data_path
from abscot_plugin.rollout import RLSetup, completion_log_probs, rollout

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


def test_rollout_layout_traces_and_seams(tiny_rl):
    tok, model, setup, problems, out = tiny_rl
    newline = setup.builder.newline_ids
    assert out["prompt_ids"][0] == setup.builder.problem_prefix(problems[0])  # the evaluation prompt
    for i, (completion, logps, mask) in enumerate(
        zip(out["completion_ids"], out["logprobs"], out["env_mask"], strict=True)
    ):
        n = out["abscot_trace_tokens"][i]
        check_trace(completion[:n], setup.vocab, setup.trace)
        assert completion[n] == setup.vocab.end_id and completion[n + 1 : n + 1 + len(newline)] == newline
        assert len(completion) == len(logps) == len(mask) <= 20
        # in the loss: the trace, the sampled <endabstract>, the answer; out: the inserted \n
        assert mask == [1] * (n + 1) + [0] * len(newline) + [1] * (len(completion) - n - 1 - len(newline))
        assert logps[n + 1 : n + 1 + len(newline)] == [0.0] * len(newline)
        answer = completion[n + 1 + len(newline) :]
        assert out["abscot_stopped"][i] == (answer[-1:] == [setup.stop_id()])
        if n == setup.trace.m_max:
            assert logps[n] == 0.0  # <endabstract> forced at m_max: probability 1
    traces = [tuple(c[: out["abscot_trace_tokens"][i]]) for i, c in enumerate(out["completion_ids"])]
    assert len(set(traces[:K])) > 1, "the K rollouts of one prompt should differ"
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


def _trainer_logps(trainer_cls, setup, model, out, pad_id):
    ids, mask, length = _trl_batch(out, pad_id)
    fake = SimpleNamespace(
        abscot_rl=setup, temperature=setup.trace.temperature, model_kwarg_keys={"logits_to_keep"},
        _entropy_bonus_enabled=False,
    )
    with torch.no_grad():
        logps, _, _ = trainer_cls._get_per_token_logps_and_entropies(fake, model, ids, mask, length)
    return logps


def test_trainer_log_probs_equal_the_samplers(tiny_rl):
    """For fixed rollouts, the trainer's per-token log-probs (trace under the constraint, answer
    free) equal the sampler's at every loss position, to fp32 tolerance; TRL's own full-vocabulary
    log-softmax does not at trace positions (what the override fixes)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    from abscot_plugin.grpo_trainer import AbsCoTGRPOTrainer

    tok, model, setup, _, out = tiny_rl
    ours = _trainer_logps(AbsCoTGRPOTrainer, setup, model, out, tok.pad_token_id)
    stock = _trainer_logps(GRPOTrainer, setup, model, out, tok.pad_token_id)
    worst_trace = worst_answer = stock_trace = stock_answer = 0.0
    for row, (logps, mask) in enumerate(zip(out["logprobs"], out["env_mask"], strict=True)):
        n = out["abscot_trace_tokens"][row] + 1  # trace positions, <endabstract> included
        sampler = torch.tensor(logps)
        for pos in range(len(logps)):
            if not mask[pos]:
                continue
            diff = abs(float(ours[row, pos]) - float(sampler[pos]))
            stock_diff = abs(float(stock[row, pos]) - float(sampler[pos]))
            if pos < n:
                worst_trace, stock_trace = max(worst_trace, diff), max(stock_trace, stock_diff)
            else:
                worst_answer, stock_answer = max(worst_answer, diff), max(stock_answer, stock_diff)
    assert worst_trace < 1e-5 and worst_answer < 1e-5, (worst_trace, worst_answer)
    assert stock_answer < 1e-5 and stock_trace > 1e-2, (stock_answer, stock_trace)


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
