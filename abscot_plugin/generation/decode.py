"""Constrained decoding of abstract traces and answers: what every backend shares.

Stage 1 (:meth:`Decoder.traces`): from a prefix ending in ``<beginabstract>``, sample symbols of
V_abs only; ``<endabstract>`` is forbidden until ``m_min`` symbols and forced after ``m_max``.
Stage 2 (:meth:`Decoder.complete`): greedy, unconstrained continuation up to a token budget,
stopping at stop ids. :func:`two_stage` chains them the way evaluation does (docs/method.md).

Backends, one module each: :class:`~.hf_decoder.HFDecoder` (transformers ``generate`` with
:class:`~.samplers.TraceSampler`, a logits processor that samples each row itself and records each
draw's log-probability; CPU and small runs; it also samples RL's free answers) and
:class:`~.vllm_decoder.VLLMDecoder` (``SamplingParams.allowed_token_ids``; GPU runs; its engine is
built by :func:`~.engines.build_llm`). Both return token ids and both pass every trace through
:func:`check_trace`, so a backend that broke the constraint fails loudly instead of writing a bad
trace. The stage-1 distribution (allowed set, temperature, top-p) is
:func:`~.samplers.trace_log_probs`, the one definition both the sampler and later log-probability
computations read. This module imports neither torch nor vLLM (the backends' modules do).

Seeds: every prompt gets its own seed, :func:`prompt_seed` of the run seed and its ids, on both
backends, so a row's trace does not depend on which rows share its batch, on the batch size, the
order, or how a resumed run is chunked. What this cannot promise: batching changes the shapes of
the matrix products (left padding), so a row's logits differ by float rounding between batch
shapes. The HF sampler draws one uniform per row and step and inverts the CDF over the allowed
ids, so a token changes only when its uniform falls between the two CDFs at some boundary. On
the tiny test model (a row alone vs in a padded batch of 8) the CDFs differ by at most 3e-7 in
float32, a 4e-6 chance per step (~4e-4 per 100-symbol trace: a few rows of a large run), but by
3e-4 in bfloat16, a 4e-3 chance per step: with bf16 weights, expect a sizeable share of long
traces to change when their batch shapes change. vLLM has the same limitation (its batches
change from step to step).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..core.traces import TraceSettings

if TYPE_CHECKING:
    from ..tokens.sequences import SequenceBuilder
    from ..tokens.vocab import AbstractVocab


class TraceError(ValueError):
    """A decoded trace that breaks the stage-1 constraint (a backend bug, never expected)."""


class Decoder(Protocol):
    """What trace generation and evaluation need from a generation backend."""

    vocab: AbstractVocab

    def traces(self, prefixes: list[list[int]], settings: TraceSettings) -> list[list[int]]:
        """Stage 1: the symbol ids of one trace per prefix, without ``<endabstract>``."""
        ...

    def complete(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """Stage 2: greedy continuation of each prompt, excluding the stop token."""
        ...


def check_trace(ids: Sequence[int], vocab: AbstractVocab, settings: TraceSettings) -> list[int]:
    """Return ``ids`` as a list if they are m_min..m_max symbols of V_abs; raise TraceError if not."""
    allowed = set(vocab.symbol_ids)
    bad = [i for i in ids if i not in allowed]
    if bad:
        raise TraceError(f"trace contains ids outside V_abs: {bad[:5]}")
    if not settings.m_min <= len(ids) <= settings.m_max:
        raise TraceError(f"trace has {len(ids)} symbols, outside [{settings.m_min}, {settings.m_max}]")
    return list(ids)


def prompt_seed(seed: int, prefix: Sequence[int]) -> int:
    """A per-prompt seed from the run seed and the prompt's ids (independent of batching/order)."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, prefix))}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """``ids`` up to (excluding) the first stop id."""
    stops = set(stop_ids)
    for pos, token in enumerate(ids):
        if token in stops:
            return list(ids[:pos])
    return list(ids)


@dataclass(frozen=True)
class Sampled:
    """Sampled token ids and the log-probability of each under the distribution it came from."""

    ids: list[int]
    log_probs: list[float]


@dataclass(frozen=True)
class TwoStageOutput:
    """One two-stage decode: the trace's symbol ids and the answer's ids (no stop token)."""

    trace: list[int]
    answer: list[int]


def two_stage(
    decoder: Decoder,
    prefixes: list[list[int]],
    settings: TraceSettings,
    answer_max_tokens: int,
    answer_stop_ids: list[int],
    builder: SequenceBuilder,
) -> list[TwoStageOutput]:
    """Stage 1 on ``prefixes`` (x <beginabstract>), then stage 2 greedy on
    prefix + z <endabstract> \\n (:meth:`SequenceBuilder.answer_prefix_suffix`)."""
    traces = decoder.traces(prefixes, settings)
    prompts = [list(p) + builder.answer_prefix_suffix(z) for p, z in zip(prefixes, traces, strict=True)]
    answers = decoder.complete(prompts, answer_max_tokens, answer_stop_ids)
    return [TwoStageOutput(z, y) for z, y in zip(traces, answers, strict=True)]
