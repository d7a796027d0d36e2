"""Constrained decoding of abstract traces and answers, one implementation over two backends.

Stage 1 (:meth:`Decoder.traces`): from a prefix ending in ``<beginabstract>``, sample symbols of
V_abs only; ``<endabstract>`` is forbidden until ``m_min`` symbols and forced after ``m_max``.
Stage 2 (:meth:`Decoder.complete`): greedy, unconstrained continuation up to a token budget,
stopping at stop ids. :func:`two_stage` chains them the way evaluation does (docs/method.md).

Backends: :class:`HFDecoder` (transformers ``generate`` with :class:`TraceSampler`, a logits
processor that samples each row itself and records each draw's log-probability; CPU and small
runs; it also samples RL's free answers, :meth:`HFDecoder.sample_answers`) and :class:`VLLMDecoder`
(``SamplingParams.allowed_token_ids``; GPU runs). Both return token ids and both pass every trace
through :func:`check_trace`, so a backend that broke the constraint fails loudly instead of writing
a bad trace. vLLM is imported lazily: the vLLM environment has no axolotl and this module never
imports it. The stage-1 distribution (allowed set, temperature, top-p) is
:func:`trace_log_probs`, the one definition both the sampler and later log-probability
computations read.

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
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from ..core.choices import DEFAULT_HF_BATCH_SIZE
from ..core.traces import TraceSettings
from ..tokens.vocab import AbstractVocab

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..tokens.sequences import SequenceBuilder


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


# -- the stage-1 distribution -----------------------------------------------------------------
def trace_log_probs(
    logits: torch.Tensor, generated: int, vocab: AbstractVocab, settings: TraceSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage-1 next-token distribution after ``generated`` trace symbols.

    ``logits``: ``[batch, vocab_size]`` scores of the next token. Returns ``(allowed, log_probs)``:
    the allowed ids ``[k]`` and float32 log-probabilities ``[batch, k]`` over them (-inf where
    top-p removed an id). Allowed: V_abs before ``m_min`` symbols, V_abs and ``<endabstract>`` from
    ``m_min``, only ``<endabstract>`` at ``m_max``. Then temperature T (softmax of logits / T over
    the allowed ids; T = 0 puts all mass on their argmax) and top-p (the highest-probability ids
    whose mass reaches ``top_p``, as transformers' and vLLM's top-p keep them; renormalised). This
    is what :class:`TraceSampler` samples from; anything that needs a trace's log-probability
    under the teacher (e.g. importance ratios) should read it here.
    """
    ids = list(vocab.symbol_ids) if generated < settings.m_max else []
    if generated >= settings.m_min:
        ids.append(vocab.end_id)
    allowed = torch.tensor(ids, dtype=torch.long, device=logits.device)
    scores = logits.index_select(-1, allowed).float()
    if settings.temperature == 0:
        best = scores.argmax(-1, keepdim=True)
        return allowed, torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
    scores = scores / settings.temperature
    if settings.top_p < 1.0:
        ordered, order = scores.sort(-1)
        drop = ordered.softmax(-1).cumsum(-1) <= 1 - settings.top_p
        drop[..., -1] = False  # the most likely id always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return allowed, scores.log_softmax(-1)


class RowSampler(LogitsProcessor):
    """Samples tokens per row inside ``generate`` (which then runs greedy over the forced scores).

    Row r draws its step-k token from :meth:`distribution` with the k-th uniform of a generator
    seeded by ``seeds[r]`` (inverse CDF over the distribution's ids) and returns scores that leave
    only that token, so the draw depends on the row's own seed and logits alone. Positions past
    ``prompt_len`` (the padded prompt width) are generated. ``chosen[r][k]`` is the float32
    log-probability of row r's step-k token under the distribution it was drawn from (what RL
    needs as the sampler's log-probabilities).
    """

    def __init__(self, prompt_len: int, seeds: Sequence[int], steps: int):
        self.prompt_len = prompt_len
        self.uniforms = torch.stack(
            [  # [step, row]
                torch.rand(steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) for seed in seeds
            ],
            dim=1,
        )
        self.chosen: list[list[float]] = [[] for _ in seeds]

    def distribution(self, scores: torch.Tensor, generated: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [k], log_probs [batch, k])`` of the step after ``generated`` tokens."""
        raise NotImplementedError

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1] - self.prompt_len
        allowed, log_probs = self.distribution(scores, generated)
        cdf = log_probs.double().exp().cpu().cumsum(-1)
        cdf = cdf / cdf[:, -1:]  # ends at exactly 1.0, above every uniform in [0, 1)
        pick = torch.searchsorted(cdf, self.uniforms[generated, :, None], right=True).squeeze(-1)
        pick = pick.to(allowed.device)
        for row, value in enumerate(log_probs.gather(-1, pick[:, None]).squeeze(-1).tolist()):
            self.chosen[row].append(value)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, allowed[pick][:, None], 0.0)


class TraceSampler(RowSampler):
    """Stage 1: draws from :func:`trace_log_probs` (V_abs, ``<endabstract>`` between m_min and
    m_max, temperature, top-p)."""

    def __init__(self, vocab: AbstractVocab, prompt_len: int, settings: TraceSettings, seeds: Sequence[int]):
        super().__init__(prompt_len, seeds, settings.m_max + 1)
        self.vocab = vocab
        self.settings = settings

    def distribution(self, scores: torch.Tensor, generated: int) -> tuple[torch.Tensor, torch.Tensor]:
        return trace_log_probs(scores, generated, self.vocab, self.settings)


class AnswerSampler(RowSampler):
    """Free sampling (RL's stage 2): softmax of logits / ``temperature`` over the whole vocabulary,
    no top-p/top-k (what a GRPO trainer's log-probabilities assume)."""

    def __init__(self, prompt_len: int, temperature: float, seeds: Sequence[int], steps: int):
        if temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        super().__init__(prompt_len, seeds, steps)
        self.temperature = temperature

    def distribution(self, scores: torch.Tensor, generated: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.arange(scores.shape[-1], device=scores.device)
        return ids, (scores.float() / self.temperature).log_softmax(-1)


@dataclass(frozen=True)
class Sampled:
    """Sampled token ids and the log-probability of each under the distribution it came from."""

    ids: list[int]
    log_probs: list[float]


# -- transformers ----------------------------------------------------------------------------
class HFDecoder:
    """:class:`Decoder` over a transformers causal LM (left padding, batched, seeded)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        vocab: AbstractVocab,
        batch_size: int = DEFAULT_HF_BATCH_SIZE,
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
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            logits_processor=LogitsProcessorList(processors or []),
        )
        return out[:, ids.shape[1] :].tolist()

    def _sample(
        self, prompts: list[list[int]], make_sampler, max_new_tokens: int, stop_ids: list[int]
    ) -> list[Sampled]:
        """``generate`` under the row sampler ``make_sampler(prompt_len, seeds of the batch)``;
        each row up to and including its first stop id."""
        results: list[Sampled] = [Sampled([], []) for _ in prompts]
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stop_ids),
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
        )
        for idx, ids, mask in self._batches(prompts):
            sampler = make_sampler(ids.shape[1], idx)
            rows = self._generate(ids, mask, config, [sampler])
            for r, (i, row) in enumerate(zip(idx, rows, strict=True)):
                n = min(len(_cut_at_stop(row, stop_ids)) + 1, len(row))
                results[i] = Sampled(row[:n], sampler.chosen[r][:n])
        return results

    def sample_traces(
        self, prefixes: list[list[int]], settings: TraceSettings, seeds: Sequence[int] | None = None
    ) -> list[Sampled]:
        """Stage 1 with log-probabilities: each trace's symbols then ``<endabstract>`` (always
        there: forced at m_max). Row i is seeded by ``seeds[i]``, by default
        :func:`prompt_seed` of ``settings.seed`` and its prefix (the same trace in any batch,
        modulo float rounding); checked by :func:`check_trace`."""
        if seeds is None:
            seeds = [prompt_seed(settings.seed, p) for p in prefixes]
        seeds = list(seeds)

        def make(prompt_len: int, idx: list[int]) -> TraceSampler:
            return TraceSampler(self.vocab, prompt_len, settings, [seeds[i] for i in idx])

        out = self._sample(prefixes, make, settings.m_max + 1, [self.vocab.end_id])
        for s in out:
            check_trace(s.ids[:-1], self.vocab, settings)
        return out

    def traces(self, prefixes: list[list[int]], settings: TraceSettings) -> list[list[int]]:
        """Stage 1: the symbols of :meth:`sample_traces` (``<endabstract>`` dropped)."""
        return [s.ids[:-1] for s in self.sample_traces(prefixes, settings)]

    def sample_answers(
        self,
        prompts: list[list[int]],
        temperature: float,
        max_new_tokens: int,
        stop_ids: list[int],
        seeds: Sequence[int],
    ) -> list[Sampled]:
        """Free sampling at ``temperature`` (:class:`AnswerSampler`), row i seeded by
        ``seeds[i]``; each row ends with its stop id unless it ran out of ``max_new_tokens``."""
        seeds = list(seeds)

        def make(prompt_len: int, idx: list[int]) -> AnswerSampler:
            return AnswerSampler(prompt_len, temperature, [seeds[i] for i in idx], max_new_tokens)

        return self._sample(prompts, make, max_new_tokens, stop_ids)

    def complete(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """Stage 2: greedy ``generate`` stopping at ``stop_ids``."""
        results: list[list[int]] = [[] for _ in prompts]
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stop_ids),
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
        )
        for idx, ids, mask in self._batches(prompts):
            for i, row in zip(idx, self._generate(ids, mask, config), strict=True):
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
                n=1,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=0,
                repetition_penalty=1.0,
                min_tokens=settings.m_min,
                max_tokens=settings.m_max,
                stop_token_ids=[self.vocab.end_id],
                ignore_eos=True,
                allowed_token_ids=self.vocab.allowed_trace_ids,
                seed=prompt_seed(settings.seed, prefix),
            )
            for prefix in prefixes
        ]
        return [
            check_trace(_cut_at_stop(ids, [self.vocab.end_id]), self.vocab, settings)
            for ids in self._run(prefixes, params)
        ]

    def _sampled(self, prompts: list[list[int]], params: list[Any]) -> list[Sampled]:
        if any(not p for p in prompts):
            raise ValueError("empty prompt: every prefix needs at least one token")
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        results = []
        for out in outputs:
            ids = list(out.outputs[0].token_ids)
            steps = out.outputs[0].logprobs or []
            log_probs = [float(step[token].logprob) for step, token in zip(steps, ids, strict=True)]
            results.append(Sampled(ids, log_probs))
        return results

    def sample_traces(
        self, prefixes: list[list[int]], settings: TraceSettings, seeds: Sequence[int] | None = None
    ) -> list[Sampled]:
        """:meth:`HFDecoder.sample_traces` on vLLM: symbols then ``<endabstract>`` (appended with
        log-probability 0 when m_max forced it). The log-probabilities are the sampled
        distribution's only when the engine runs with ``logprobs_mode="processed_logprobs"``
        (after ``allowed_token_ids``, ``min_tokens`` and temperature); vLLM's default reports the
        raw model's."""
        from vllm import SamplingParams

        if seeds is None:
            seeds = [prompt_seed(settings.seed, p) for p in prefixes]
        params = [
            SamplingParams(
                n=1,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=0,
                repetition_penalty=1.0,
                min_tokens=settings.m_min,
                max_tokens=settings.m_max,
                stop_token_ids=[self.vocab.end_id],
                ignore_eos=True,
                allowed_token_ids=self.vocab.allowed_trace_ids,
                seed=seed,
                logprobs=0,
            )
            for seed in seeds
        ]
        results = []
        for s in self._sampled(prefixes, params):
            if not s.ids or s.ids[-1] != self.vocab.end_id:
                s = Sampled(s.ids + [self.vocab.end_id], s.log_probs + [0.0])
            check_trace(s.ids[:-1], self.vocab, settings)
            results.append(s)
        return results

    def sample_answers(
        self,
        prompts: list[list[int]],
        temperature: float,
        max_new_tokens: int,
        stop_ids: list[int],
        seeds: Sequence[int],
    ) -> list[Sampled]:
        """:meth:`HFDecoder.sample_answers` on vLLM (full softmax at ``temperature``)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                top_k=0,
                repetition_penalty=1.0,
                max_tokens=max_new_tokens,
                stop_token_ids=list(stop_ids),
                ignore_eos=True,
                seed=seed,
                logprobs=0,
            )
            for seed in seeds
        ]
        return self._sampled(prompts, params)

    def complete(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """Stage 2: greedy (temperature 0); stops only at ``stop_ids`` (not the model's own EOS)."""
        from vllm import SamplingParams

        params = SamplingParams(
            n=1,
            temperature=0.0,
            max_tokens=max_new_tokens,
            stop_token_ids=list(stop_ids),
            ignore_eos=True,
            repetition_penalty=1.0,
        )
        return [_cut_at_stop(ids, stop_ids) for ids in self._run(prompts, [params] * len(prompts))]


# -- the two-stage decode --------------------------------------------------------------------
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
