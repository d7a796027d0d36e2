"""Full fine-tuning under DeepSpeed ZeRO-3, on CPU (gloo): the plugin's load hooks on partitioned
weights, in a real `axolotl train` run and on two ranks.

DeepSpeed JIT-builds its CPU shared-memory comm op on first use (~2 min on a fresh machine, then
cached under ~/.cache/torch_extensions)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from support import ROOT, offline_env, run_axolotl, tiny_config
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from abscot_plugin.tokens.vocab import AbstractVocab, check_tied, init_new_rows

ZERO3 = ROOT / "axolotl_configs" / "deepspeed" / "zero3_bf16.json"


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def dist_env(**extra: str) -> dict[str, str]:
    """Variables of a torch.distributed run on this machine's CPU."""
    return dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), DS_ACCELERATOR="cpu", **extra)


@pytest.mark.slow
def test_full_finetune_with_zero3_initialises_rows_and_keeps_the_tie(tiny_dir, tmp_path):
    """Phase A full fine-tune with the shipped ZeRO-3 config: the model is built partitioned, the
    66 new rows get exactly init_new_rows' values (learning rate 0, so the saved model is the
    initialised one), old rows stay, and the saved model keeps lm_head tied."""
    cfg = tiny_config(
        "a",
        tiny_dir,
        tmp_path / "out",
        tmp_path,
        deepspeed=str(ZERO3),
        max_steps=2,
        learning_rate=0.0,
        plugins=["abscot_plugin.AbsCoTPlugin", "axolotl_probes.ZeroOnCpu"],
    )
    for key in [k for k in cfg if k.startswith("lora_")] + ["adapter", "abscot_lora_embeddings"]:
        cfg.pop(key)
    probe = tmp_path / "probe.json"
    proc = run_axolotl(cfg, tmp_path, "zero3", **dist_env(ABSCOT_PROBE_OUT=str(probe)))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "abscot: initialised 66 new embedding rows (random)" in proc.stdout + proc.stderr

    built = json.loads(probe.read_text())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    full = list(base.get_input_embeddings().weight.shape)
    assert built == {"partitioned": True, "shape": [0], "ds_shape": full}

    vocab = AbstractVocab.from_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "out"))
    new = list(vocab.all_ids)
    before = base.get_input_embeddings().weight.detach().clone()
    init_new_rows(base, new, "random", seed=0)
    expected = base.get_input_embeddings().weight.detach()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    rows = saved.get_input_embeddings().weight.detach()
    old = torch.ones(rows.shape[0], dtype=torch.bool)
    old[new] = False
    assert torch.equal(rows[old], before[old])
    assert not torch.allclose(rows[new], before[new])
    assert torch.allclose(rows[new], expected[new], atol=1e-6)
    # the tie, in what was written: no separate lm_head weight, the config still ties
    assert saved.config.tie_word_embeddings
    assert not any(k.startswith("lm_head") for k in load_file(tmp_path / "out" / "model.safetensors"))
    check_tied(saved, new)


@pytest.mark.slow
def test_new_rows_land_in_every_ranks_shard_and_the_tie_is_checked_gathered(tiny_dir, vocab, tmp_path):
    """Two ranks under zero.Init: embedding_rows sees the full size; after init_new_rows each
    rank's shard holds its part of the initialised weight; on an untied model init_new_rows fills
    both matrices and `gathered` reads them back on every rank (gathering both in one DeepSpeed
    call, rank 0 read lm_head's rows in place of the embedding's in about one run in three);
    check_tied gathers and catches an lm_head that is not tied although the config says so."""
    ids = list(vocab.all_ids)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    config = AutoConfig.from_pretrained(tiny_dir)
    config.tie_word_embeddings = False
    untied = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        untied.get_output_embeddings().weight.copy_(torch.randn(untied.get_output_embeddings().weight.shape))
    untied.save_pretrained(tmp_path / "untied")
    init_new_rows(untied, ids, "random", seed=0)
    untied_rows = [untied.get_input_embeddings().weight[ids], untied.get_output_embeddings().weight[ids]]
    env = offline_env(**dist_env(WORLD_SIZE="2"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "zero3_worker.py"),
                str(tiny_dir),
                str(tmp_path / "untied"),
                str(tmp_path / "ids.json"),
                str(tmp_path),
            ],
            cwd=ROOT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    init_new_rows(model, ids, "random", seed=0)
    flat = model.get_input_embeddings().weight.detach().flatten()
    shards = []
    for rank in range(2):
        seen = torch.load(tmp_path / f"rank{rank}.pt")
        assert seen["zero3"] and seen["shape"] == (0,) and seen["rows"] == model.config.vocab_size
        assert seen["tied_ok"]
        # an untied model's two matrices, gathered together on each rank, hold its new rows
        assert all(torch.equal(a, b) for a, b in zip(seen["untied_rows"], untied_rows, strict=True)), rank
        assert "no longer tied" in (seen["untied_error"] or "the untied head passed check_tied"), seen["untied_error"]
        shards.append(seen["shard"])
    # rank r holds elements [r·n, (r+1)·n) of the flattened weight (the last shard zero-padded)
    assert torch.equal(torch.cat(shards)[: flat.numel()], flat)


def grpo_with_and_without_zero3(base, tmp_path, trl: dict, **extra) -> dict[str, list[dict]]:
    """GRPO full fine-tuning of ``base`` (tests/test_grpo_train.py's tiny_grpo.yml without LoRA, m_max
    16, learning rate 0.005, 2 steps of 8 rollouts, the length reward; ``trl`` and ``extra`` keys
    override) twice: without DeepSpeed and under the shipped ZeRO-3 config (one CPU process; asserted
    built partitioned). Each run's logged steps, under "plain" and "zero3"."""
    from test_grpo_train import grpo_config, logged_steps

    logs = {}
    for name in ("plain", "zero3"):
        cfg = grpo_config(
            base,
            tmp_path / name,
            tmp_path / name,
            abscot_m_max=16,
            abscot_rl_m_min=2,
            learning_rate=0.005,
            max_steps=2,
            micro_batch_size=8,
            **extra,
        )
        cfg["trl"].update(reward_funcs=["abscot_plugin.rl.rewards.length_reward"], reward_weights=[1.0], **trl)
        for key in [k for k in cfg if k.startswith("lora_")] + ["adapter", "abscot_lora_embeddings"]:
            cfg.pop(key)
        env = {}
        if name == "zero3":
            cfg.update(deepspeed=str(ZERO3), plugins=cfg["plugins"] + ["axolotl_probes.ZeroOnCpu"])
            env = dist_env(ABSCOT_PROBE_OUT=str(tmp_path / "probe.json"))
        (tmp_path / name).mkdir()
        proc = run_axolotl(cfg, tmp_path / name, "grpo", **env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        logs[name] = logged_steps(proc.stdout + proc.stderr)
    assert json.loads((tmp_path / "probe.json").read_text())["partitioned"]
    return logs


@pytest.mark.slow
def test_grpo_full_finetune_under_zero3_takes_the_same_steps_as_without(tiny_extended, tmp_path):
    """axolotl_configs/qwen3_4b_grpo_full.yml's layout on the tiny model: GRPO full fine-tuning under
    the shipped ZeRO-3 config (one CPU process: policy and reference built partitioned, rollouts
    gathered layer by layer) logs the same loss, gradient norm, rewards and KL at every step as
    the same run without DeepSpeed; the KL to the reference is zero at step 0 and not after."""
    logs = grpo_with_and_without_zero3(
        tiny_extended, tmp_path, dict(max_completion_length=32, num_generations=4, beta=0.04)
    )
    keys = ("loss", "grad_norm", "rewards/length_reward/mean", "kl")
    plain, zero3 = ([{k: s[k] for k in keys} for s in logs[n]] for n in ("plain", "zero3"))
    assert len(plain) == 2 and zero3 == plain
    assert plain[0]["kl"] == 0.0 and plain[-1]["kl"] > 0.0
