"""The transformers backend of :class:`~abscot_plugin.generation.decode.Decoder`: batched, left
padded, each row sampled with its own seed by a logits processor (:mod:`.samplers`); CPU and small
runs, and RL's in-process rollouts (:meth:`HFDecoder.sample_traces`,
:meth:`HFDecoder.sample_answers`). Models are loaded by :func:`~.engines.load_hf`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig, LogitsProcessorList

from ..core.choices import DEFAULT_HF_BATCH_SIZE
from ..core.traces import TraceSettings
from ..tokens.vocab import AbstractVocab
from .decode import Sampled, check_trace, cut_at_stop, prompt_seed
from .samplers import AnswerSampler, TraceSampler

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    def _stop_config(self, max_new_tokens: int, stop_ids: Sequence[int]) -> GenerationConfig:
        """``generate``'s settings of both stages: no sampling of its own (the samplers draw), at most
        ``max_new_tokens``, stopping at ``stop_ids``."""
        return GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=list(stop_ids),
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
        )

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
        config = self._stop_config(max_new_tokens, stop_ids)
        for idx, ids, mask in self._batches(prompts):
            sampler = make_sampler(ids.shape[1], idx)
            rows = self._generate(ids, mask, config, [sampler])
            for r, (i, row) in enumerate(zip(idx, rows, strict=True)):
                n = min(len(cut_at_stop(row, stop_ids)) + 1, len(row))
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
        config = self._stop_config(max_new_tokens, stop_ids)
        for idx, ids, mask in self._batches(prompts):
            for i, row in zip(idx, self._generate(ids, mask, config), strict=True):
                results[i] = cut_at_stop(row, stop_ids)
        return results
