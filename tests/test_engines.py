"""One vLLM engine builder and one HF loader (abscot_plugin.generation.engines) for trace generation,
evaluation and the rollout server: every caller's engine gets the vLLM-CPU settings (a fake ``vllm``
module records what each passes, so no vLLM is needed here), and every caller's HF model follows
one dtype rule."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from abscot_plugin.generation import generate
from abscot_plugin.generation.engines import hf_device, hf_dtype, load_hf
from abscot_plugin.generation.vllm_decoder import VLLMDecoder

CPU_SETTINGS = {"enable_chunked_prefill": False, "enforce_eager": True}


class RecordingLLM:
    """Stands in for ``vllm.LLM``: records the keyword arguments of every engine built."""

    built: list[dict] = []

    def __init__(self, **kwargs):
        RecordingLLM.built.append(kwargs)
        parallel = types.SimpleNamespace(world_size=kwargs.get("tensor_parallel_size", 1))
        self.llm_engine = types.SimpleNamespace(vllm_config=types.SimpleNamespace(parallel_config=parallel))


@pytest.fixture(params=["cpu", "cuda"])
def fake_vllm(request, monkeypatch):
    """A ``vllm`` module whose ``LLM`` records its arguments, on vLLM's CPU platform or a GPU one;
    yields the platform name and the list of engines built."""
    vllm = types.ModuleType("vllm")
    vllm.LLM = RecordingLLM
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: request.param == "cpu")
    vllm.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(RecordingLLM, "built", [])
    return request.param, RecordingLLM.built


def generate_engine(model, *flags: str) -> dict:
    """The generate CLI's engine (``load_decoder``) for ``flags``."""
    argv = ["--model", str(model), "--data", "-", "--mode", "phase_a", "--out", "-", "--backend", "vllm", *flags]
    decoder, _, _ = generate.load_decoder(generate.parse_args(argv))
    assert isinstance(decoder, VLLMDecoder)
    return decoder.llm


def eval_engine(model, **model_args):
    from abscot_plugin.eval.lm_eval_models import AbsCoTVLLM

    lm = AbsCoTVLLM(pretrained=str(model), **model_args)
    assert isinstance(lm.decoder, VLLMDecoder)
    return lm.decoder.llm


def rollout_server_engine(model, *flags: str):
    from abscot_plugin.rl import rollout_server

    engine = rollout_server.build_engine(rollout_server.parse_args([str(model), *flags]))
    assert isinstance(engine.decoder, VLLMDecoder)
    return engine.decoder.llm


CALLERS = {"generate": generate_engine, "eval": eval_engine, "rollout_server": rollout_server_engine}


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_every_engine_gets_the_cpu_settings_on_cpu_only(fake_vllm, tiny_extended, caller):
    """Trace generation, the lm-eval vLLM model and the rollout server build their engines through
    build_llm: on CPU with chunked prefill off and eager mode; on a GPU with neither forced; always
    serving the model's own tokenizer with the sampled distribution's log-probs."""
    platform, built = fake_vllm
    CALLERS[caller](tiny_extended)
    (kwargs,) = built
    assert kwargs["model"] == kwargs["tokenizer"] == str(tiny_extended)
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    if platform == "cpu":
        assert {key: kwargs[key] for key in CPU_SETTINGS} == CPU_SETTINGS
    else:
        assert "enable_chunked_prefill" not in kwargs and kwargs["enforce_eager"] is False


def test_callers_keep_their_own_engine_settings(fake_vllm, tiny_extended):
    """What differs between the callers reaches vLLM: the CLI's seed and length, evaluation's
    prefix cache, the rollout server's weight-sync extension; an explicit enforce_eager wins."""
    from abscot_plugin.rl.rollout_server import EXTENSION

    platform, built = fake_vllm
    generate_engine(tiny_extended, "--seed", "5", "--max-model-len", "1024", "--no-enforce-eager")
    eval_engine(tiny_extended, seed=3, enforce_eager=True)
    rollout_server_engine(tiny_extended, "--tensor-parallel-size", "2")
    cli, lm, server = built
    assert (cli["seed"], cli["max_model_len"], cli["enforce_eager"]) == (5, 1024, False)
    assert (lm["seed"], lm["enable_prefix_caching"], lm["enforce_eager"]) == (3, True, True)
    assert server["worker_extension_cls"] == EXTENSION and server["tensor_parallel_size"] == 2
    assert all(kw.get("enable_chunked_prefill") is (False if platform == "cpu" else None) for kw in built)


def test_hf_dtype_rule():
    """``auto``: bfloat16 on CUDA, float32 elsewhere; a named dtype as named; another name is refused."""
    assert hf_dtype("auto", "cpu") is torch.float32
    assert hf_dtype("auto", "cuda") is hf_dtype("auto", "cuda:1") is torch.bfloat16
    assert hf_dtype("float16", "cpu") is torch.float16 and hf_dtype("float32", "cuda") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8': use auto or one of"):
        hf_dtype("fp8", "cpu")
    assert hf_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert hf_device(None) == hf_device("cuda") == "cpu"  # lm-eval's default --device falls back


@pytest.fixture(scope="module")
def bf16_checkpoint(tiny_extended, tmp_path_factory):
    """The tiny model saved in bfloat16: ``auto`` must not mean the checkpoint's dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("bf16")
    AutoModelForCausalLM.from_pretrained(tiny_extended, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_extended).save_pretrained(out)
    return out


@pytest.mark.parametrize(("dtype", "expected"), [("auto", torch.float32), ("bfloat16", torch.bfloat16)])
def test_generation_and_evaluation_load_hf_models_alike(bf16_checkpoint, dtype, expected):
    """The generate CLI's HF backend and the abscot-hf lm-eval model load a bfloat16 checkpoint in
    the same dtype on CPU: float32 for ``auto``, as named otherwise (load_hf's rule)."""
    from abscot_plugin.eval.lm_eval_models import AbsCoTHFLM

    argv = ["--model", str(bf16_checkpoint), "--data", "-", "--mode", "phase_b", "--out", "-", "--dtype", dtype]
    decoder, _, _ = generate.load_decoder(generate.parse_args(argv))
    lm = AbsCoTHFLM(pretrained=str(bf16_checkpoint), dtype=dtype, device="cpu")
    direct = load_hf(bf16_checkpoint, dtype, "cpu")
    assert decoder.model.dtype == lm.decoder.model.dtype == direct.dtype == expected
    if not torch.cuda.is_available():
        assert decoder.model.device.type == lm.decoder.model.device.type == "cpu"
    with pytest.raises(ValueError, match="abscot-hf: unknown dtype 'half'"):
        AbsCoTHFLM(pretrained=str(bf16_checkpoint), dtype="half", device="cpu")
