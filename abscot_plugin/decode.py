"""Constrained decoding of abstract traces and answers, one implementation over two backends.

Stage 1 (:meth:`Decoder.traces`): from a prefix ending in ``<beginabstract>``, sample symbols of
V_abs only; ``<endabstract>`` is forbidden until ``m_min`` symbols and forced after ``m_max``.
Stage 2 (:meth:`Decoder.complete`): greedy, unconstrained continuation up to a token budget,
stopping at stop ids. :func:`two_stage` chains them the way evaluation does (METHOD.md).

Backends: :class:`HFDecoder` (transformers ``generate`` with a masking logits processor; CPU and
small runs) and :class:`VLLMDecoder` (``SamplingParams.allowed_token_ids``; GPU runs). Both return
token ids and both pass every trace through :func:`check_trace`, so a backend that broke the
constraint fails loudly instead of writing a bad trace. vLLM is imported lazily: the vLLM
environment has no axolotl and this module never imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .vocab import AbstractVocab

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .sequences import SequenceBuilder


@dataclass(frozen=True)
class TraceSettings:
    """Stage-1 sampling settings (METHOD.md: m_min 16, m_max 128, temperature 0.7).

    ``temperature`` 0 means greedy. ``seed`` makes a call reproducible for the same inputs.
    """

    m_min: int = 16
    m_max: int = 128
    temperature: float = 0.7
    seed: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.m_min <= self.m_max:
            raise ValueError(f"need 1 <= m_min <= m_max, got m_min={self.m_min}, m_max={self.m_max}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


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


def _cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """``ids`` up to (excluding) the first stop id."""
    stops = set(stop_ids)
    for pos, token in enumerate(ids):
        if token in stops:
            return list(ids[:pos])
    return list(ids)


# -- transformers ----------------------------------------------------------------------------
class TraceMaskProcessor(LogitsProcessor):
    """Logits processor enforcing the stage-1 alphabet on left-padded batches.

    Positions past ``prompt_len`` are generated. Before ``m_min`` symbols only V_abs is allowed;
    from ``m_min`` to ``m_max`` V_abs and ``<endabstract>``; at ``m_max`` only ``<endabstract>``.
    (``min_new_tokens`` would only block EOS, not keep other tokens out.)
    """

    def __init__(self, vocab: AbstractVocab, prompt_len: int, m_min: int, m_max: int):
        self.symbols = torch.tensor(vocab.symbol_ids, dtype=torch.long)
        self.end_id = vocab.end_id
        self.prompt_len = prompt_len
        self.m_min = m_min
        self.m_max = m_max

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_len
        keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        if generated < self.m_max:
            keep[self.symbols.to(scores.device)] = True
        if generated >= self.m_min:
            keep[self.end_id] = True
        return scores.masked_fill(~keep, float("-inf"))


class HFDecoder:
    """:class:`Decoder` over a transformers causal LM (left padding, batched, seeded)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vocab: AbstractVocab,
        batch_size: int = 8,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.vocab = vocab
        self.batch_size = batch_size
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token to pad batches with")
        self.pad_id = int(pad)

    def _batches(self, prompts: list[list[int]]):
        """Yield (original indices, left-padded ids, attention mask), similar lengths together."""
        if any(not p for p in prompts):
            raise ValueError("empty prompt: every prefix needs at least one token")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        device = self.model.device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            yield idx, ids.to(device), mask.to(device)

    @torch.no_grad()
    def _generate(self, ids, mask, config: GenerationConfig, processors=None) -> torch.Tensor:
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config,
            logits_processor=LogitsProcessorList(processors or []),
        )
        return out[:, ids.shape[1] :].tolist()

    def traces(self, prefixes: list[list[int]], settings: TraceSettings) -> list[list[int]]:
        """Stage 1 with :class:`TraceMaskProcessor`; each batch seeded from its prompts."""
        results: list[list[int]] = [[] for _ in prefixes]
        sample = settings.temperature > 0
        config = GenerationConfig(
            do_sample=sample,
            temperature=settings.temperature if sample else None,
            top_p=settings.top_p if sample else None,
            top_k=0,
            repetition_penalty=1.0,
            max_new_tokens=settings.m_max + 1,
            eos_token_id=self.vocab.end_id,
            pad_token_id=self.pad_id,
        )
        for idx, ids, mask in self._batches(prefixes):
            mask_proc = TraceMaskProcessor(self.vocab, ids.shape[1], settings.m_min, settings.m_max)
            devices = [self.model.device] if self.model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(prompt_seed(settings.seed, [t for i in idx for t in prefixes[i]]))
                generated = self._generate(ids, mask, config, [mask_proc])
            for i, row in zip(idx, generated):
                results[i] = check_trace(_cut_at_stop(row, [self.vocab.end_id]), self.vocab, settings)
        return results

    def complete(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """Stage 2: greedy ``generate`` stopping at ``stop_ids``."""
        results: list[list[int]] = [[] for _ in prompts]
        config = GenerationConfig(
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids),
            pad_token_id=self.pad_id, repetition_penalty=1.0,
        )
        for idx, ids, mask in self._batches(prompts):
            for i, row in zip(idx, self._generate(ids, mask, config)):
                results[i] = _cut_at_stop(row, stop_ids)
        return results


# -- vLLM ------------------------------------------------------------------------------------
class VLLMDecoder:
    """:class:`Decoder` over a ``vllm.LLM``: the constraint lives in ``SamplingParams``.

    ``allowed_token_ids`` = V_abs ∪ {END}, ``min_tokens`` = m_min (vLLM blocks stop ids until
    then), ``max_tokens`` = m_max (a trace stopped by length is one whose END was forced),
    ``stop_token_ids`` = [END]. Prompts go in as token ids, never re-tokenised text.
    """

    def __init__(self, llm: Any, vocab: AbstractVocab):
        self.llm = llm
        self.vocab = vocab

    def _run(self, prompts: list[list[int]], params: list[Any]) -> list[list[int]]:
        if any(not p for p in prompts):
            raise ValueError("empty prompt: every prefix needs at least one token")
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def traces(self, prefixes: list[list[int]], settings: TraceSettings) -> list[list[int]]:
        """Stage 1; each prompt gets its own seed (:func:`prompt_seed`)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=1, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                repetition_penalty=1.0, min_tokens=settings.m_min, max_tokens=settings.m_max,
                stop_token_ids=[self.vocab.end_id], ignore_eos=True,
                allowed_token_ids=self.vocab.allowed_trace_ids,
                seed=prompt_seed(settings.seed, prefix),
            )
            for prefix in prefixes
        ]
        return [
            check_trace(_cut_at_stop(ids, [self.vocab.end_id]), self.vocab, settings)
            for ids in self._run(prefixes, params)
        ]

    def complete(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """Stage 2: greedy (temperature 0); stops only at ``stop_ids`` (not the model's own EOS)."""
        from vllm import SamplingParams

        params = SamplingParams(
            n=1, temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(stop_ids),
            ignore_eos=True, repetition_penalty=1.0,
        )
        return [_cut_at_stop(ids, stop_ids) for ids in self._run(prompts, [params] * len(prompts))]


# -- the two-stage decode --------------------------------------------------------------------
@dataclass(frozen=True)
class TwoStageOutput:
    """One two-stage decode: the trace's symbol ids and the answer's ids (no stop token)."""

    trace: list[int]
    answer: list[int]

    @property
    def num_tokens(self) -> int:
        """Generated tokens as the paper counts them: abstract tokens + answer tokens."""
        return len(self.trace) + len(self.answer)


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
    prompts = [list(p) + builder.answer_prefix_suffix(z) for p, z in zip(prefixes, traces)]
    answers = decoder.complete(prompts, answer_max_tokens, answer_stop_ids)
    return [TwoStageOutput(z, y) for z, y in zip(traces, answers)]
