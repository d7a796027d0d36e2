"""The HF backend's samplers and the stage-1 distribution they draw from.

:func:`trace_log_probs` defines the stage-1 next-token distribution (V_abs, ``<endabstract>``
between m_min and m_max, temperature, top-p); :class:`TraceSampler` samples it inside
transformers' ``generate`` and :class:`AnswerSampler` samples RL's free answers, both as
:class:`RowSampler`: each row draws with its own seed, so a row's draw does not depend on its
batch (:mod:`abscot_plugin.generation.decode`, "Seeds"). The GRPO trainer scores trace positions
with :func:`trace_log_probs` too, so its log-probabilities are the sampler's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from ..core.traces import TraceSettings
from ..tokens.vocab import AbstractVocab


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
