"""`axolotl train` with rl: grpo on the tiny model (axolotl_configs/tiny_grpo.yml): a few steps
complete, every rollout's trace is valid, the loss covers the trace, the sampled <endabstract> and
the answer but not the inserted \\n, the KL to the reference is zero at step 0, and the rewards are
logged per component; and a reward the tiny model can learn from (shorter outputs) rises."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import yaml
from support import ROOT, run_axolotl
from transformers import AutoTokenizer

from abscot_plugin.core.traces import TraceSettings
from abscot_plugin.testing.fixtures import data_path
from abscot_plugin.tokens.sequences import SequenceBuilder
from abscot_plugin.tokens.vocab import AbstractVocab


def grpo_config(base: Path, out: Path, tmp: Path, **extra) -> dict:
    """axolotl_configs/tiny_grpo.yml with only base_model, datasets[0].path and output_dir changed
    (what a run changes), plus the prepared-data path and ``extra``."""
    cfg = yaml.safe_load((ROOT / "axolotl_configs" / "tiny_grpo.yml").read_text())
    cfg.update(base_model=str(base), output_dir=str(out), dataset_prepared_path=str(tmp / "prep_grpo"))
    cfg["datasets"][0]["path"] = str(data_path("rl_tiny.jsonl"))
    cfg.update(extra)
    return cfg


def logged_steps(log: str) -> list[dict]:
    """The per-step metric dicts the trainer printed."""
    return [
        {k: float(v) for k, v in ast.literal_eval(line[line.index("{'loss'") :]).items()}
        for line in log.splitlines()
        if "{'loss'" in line
    ]


@pytest.mark.slow
def test_grpo_train_masks_kl_and_reward_logs(tiny_extended, tmp_path):
    cfg = grpo_config(tiny_extended, tmp_path / "out", tmp_path)
    cfg["plugins"].append("axolotl_probes.GRPOProbe")
    # a reward with spread (the random model never earns the math reward), so the policy moves
    cfg["trl"]["reward_funcs"].append("abscot_plugin.rl.rewards.length_reward")
    cfg["trl"]["reward_weights"].append(1.0)
    cfg["learning_rate"] = 0.02
    probe = tmp_path / "probe.pt"
    proc = run_axolotl(cfg, tmp_path, "grpo", ABSCOT_PROBE_OUT=str(probe))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "abscot GRPO: traces of 16..128 symbols at temperature 1.0, answers up to 62 tokens" in log
    steps = logged_steps(log)
    assert len(steps) == cfg["max_steps"]
    for name in ("math_reward", "format_reward", "length_reward"):
        assert all(f"rewards/{name}/mean" in s and f"rewards/{name}/std" in s for s in steps), name
    assert "frac_reward_zero_std" in steps[0]  # groups with equal rewards are counted
    assert steps[0]["kl"] == 0.0 and steps[-1]["kl"] > 0.0  # KL computed, zero before any update

    seen = torch.load(probe)
    tok = AutoTokenizer.from_pretrained(tiny_extended)
    vocab = AbstractVocab.from_tokenizer(tok, cfg["abscot_num_symbols"])
    newline = SequenceBuilder(tok, vocab).newline_ids
    loss_mask = seen["completion_mask"] * seen["tool_mask"]
    symbols = set(vocab.symbol_ids)
    for row, ids in enumerate(seen["completion_ids"].tolist()):
        n = next(i for i, t in enumerate(ids) if t not in symbols)
        assert TraceSettings.m_min <= n <= cfg["abscot_m_max"] and ids[n] == vocab.end_id  # default m_min
        assert ids[n + 1 : n + 1 + len(newline)] == newline
        length = int(seen["completion_mask"][row].sum())
        expected = [1] * (n + 1) + [0] * len(newline) + [1] * (length - n - 1 - len(newline))
        expected += [0] * (len(ids) - length)
        assert loss_mask[row].tolist() == expected, row
    # step 0: the policy is the reference (LoRA's B is zero), so per-token KL terms vanish
    on = loss_mask.bool()
    assert torch.allclose(seen["policy_per_token_logps"][on], seen["ref_per_token_logps"][on], atol=1e-6)


@pytest.mark.slow
def test_grpo_learns_short_traces_from_reward_alone(tiny_extended, tmp_path):
    """The length reward (1 - share of the token budget used) on the random tiny model: the
    constrained trace policy learns to close early, and the mean reward rises clearly (seen:
    0.05 at step 1 to 0.27-0.33 over steps 10-12). At learning rate 0.02 it rose faster but
    twice collapsed to all rollouts at full length (reward 0: no advantage left to recover
    with). Every trace of every step passed the rollout's check_trace."""
    cfg = grpo_config(
        tiny_extended,
        tmp_path / "out",
        tmp_path,
        abscot_m_max=16,
        abscot_rl_m_min=2,
        learning_rate=0.005,
        max_steps=12,
        micro_batch_size=8,
    )
    cfg["trl"].update(
        reward_funcs=["abscot_plugin.rl.rewards.length_reward"],
        reward_weights=[1.0],
        max_completion_length=48,
        num_generations=8,
        beta=0.0,
    )
    proc = run_axolotl(cfg, tmp_path, "grpo_learn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rewards = [s["rewards/length_reward/mean"] for s in logged_steps(proc.stdout + proc.stderr)]
    assert len(rewards) == 12
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards
