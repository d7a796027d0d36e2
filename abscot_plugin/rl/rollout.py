"""GRPO rollouts: the paper's two-stage decode with sampling, as TRL's ``rollout_func``.

For each prompt (the math problem text of an RL row), the prompt ids are exactly the evaluation
prompt x ``<beginabstract>`` (:meth:`SequenceBuilder.problem_prefix`). Stage 1 samples the trace z
under the constraint of :func:`samplers.trace_log_probs` (V_abs, ``<endabstract>`` forbidden before
m_min, forced at m_max) at the trainer's temperature; stage 2 samples the answer y freely at the
same temperature after z ``<endabstract>`` ``\\n``, until ``<|im_end|>`` or the answer budget.
One rollout, as handed to TRL (m_min 2, a 2-symbol trace, a 2-token answer)::

    prompt_ids      x <beginabstract>
    completion_ids  <TOKEN_C> <TOKEN_AK> <endabstract> \\n  y1   y2  <|im_end|>
    env_mask            1         1           1        0   1    1      1
    logprobs           l1        l2          l3       0.0 l4   l5     l6

What is in the loss (``env_mask`` 1): every sampled token, i.e. the trace symbols, the sampled
``<endabstract>`` (its log-probability is 0, and so is its gradient, when m_max forced it) and the
answer with its stop token. Out of the loss: the ``\\n`` the decode inserts (never sampled).
``logprobs`` are the sampler's own (:class:`samplers.RowSampler`), the distributions the tokens were
drawn from; the trainer recomputes them under the same constraint
(:mod:`abscot_plugin.train.grpo_trainer`), so the two agree (tests/test_rollout.py).

Extra keys reach the reward functions per completion: ``abscot_answer`` (the answer text, special
tokens kept, stop token dropped), ``abscot_stopped`` (the answer ended with its stop token),
``abscot_trace_tokens`` (|z|) and ``abscot_length`` (|z| + |y| over their most, m_max + the
answer budget: the share of the token budget used, in [0, 1]).

Backends: :func:`rollout` runs on :class:`hf_decoder.HFDecoder`, :class:`vllm_decoder.VLLMDecoder` or
:class:`rollout_client.RemoteDecoder` (``sample_traces`` / ``sample_answers``). :func:`rollout_func`,
what the trainer calls, uses transformers in the training process by default; with
``abscot_rollout_server`` set, a vLLM engine in its own process (:mod:`abscot_plugin.rl.rollout_server`,
the vLLM environment) whose weights the trainer syncs before each step's first rollout. TRL's own
vLLM modes are not used (they cannot apply the stage-1 constraint; docs/method.md).
Seeds: rollout i of the c-th call on process p is seeded from (trainer seed, c, p, i, prompt ids),
so the K rollouts of one prompt differ and a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.traces import TraceSettings
from ..generation.decode import Sampled, prompt_seed
from ..generation.hf_decoder import HFDecoder
from ..generation.samplers import trace_log_probs
from ..tokens.vocab import AbstractVocab
from .rl_data import ANSWER_COLUMN

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..generation.vllm_decoder import VLLMDecoder
    from ..tokens.sequences import SequenceBuilder
    from .rollout_client import RemoteDecoder


@dataclass
class RLSetup:
    """What the rollout and the trainer's log-probabilities share: the vocabulary, the prompt
    builder, the stage-1 constraint (``trace.temperature`` is the trainer's sampling temperature,
    top-p 1), the answer budget and the seed."""

    vocab: AbstractVocab
    builder: SequenceBuilder
    trace: TraceSettings
    answer_max_tokens: int
    seed: int
    batch_size: int
    calls: int = 0  # rollout calls so far (part of the seeds)

    @classmethod
    def build(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        num_symbols: int,
        m_min: int,
        m_max: int,
        temperature: float,
        max_completion_length: int,
        seed: int,
        batch_size: int,
    ) -> RLSetup:
        """The setup of a run; the answer budget is what ``max_completion_length`` leaves after
        the longest trace, ``<endabstract>`` and ``\\n``. Raises ValueError when nothing is left."""
        from ..tokens.sequences import SequenceBuilder

        vocab = AbstractVocab.from_tokenizer(tokenizer, num_symbols)
        builder = SequenceBuilder(tokenizer, vocab)
        trace = TraceSettings(m_min=m_min, m_max=m_max, temperature=temperature, seed=seed, top_p=1.0)
        head = m_max + 1 + len(builder.newline_ids)
        budget = max_completion_length - head
        if budget < 1:
            raise ValueError(
                f"max_completion_length {max_completion_length} leaves no answer tokens after a trace of "
                f"up to m_max={m_max} symbols, <endabstract> and \\n: raise it above {head}"
            )
        return cls(vocab, builder, trace, budget, seed, batch_size)

    def stop_id(self) -> int:
        return self.builder.end_of_turn


def _seeds(seed: int, tag: list[int], prefixes: list[list[int]]) -> list[int]:
    return [prompt_seed(seed, tag + [i] + p) for i, p in enumerate(prefixes)]


def rollout(
    decoder: HFDecoder | VLLMDecoder | RemoteDecoder,
    tokenizer: PreTrainedTokenizerBase,
    setup: RLSetup,
    problems: list[str],
    tag: list[int],
) -> dict[str, list]:
    """Two-stage sampled rollouts of ``problems`` (one per entry; TRL repeats each prompt K times),
    in TRL's ``rollout_func`` layout (module doc), on either backend. ``tag`` makes the seeds of
    this call distinct."""
    if any(not isinstance(p, str) or not p.strip() for p in problems):
        bad = next(i for i, p in enumerate(problems) if not isinstance(p, str) or not p.strip())
        raise ValueError(f"rollout prompt {bad} is not a non-empty problem string: {problems[bad]!r}")
    prefixes = [setup.builder.problem_prefix(p, f"rl-prompt-{i}") for i, p in enumerate(problems)]
    traces = decoder.sample_traces(prefixes, setup.trace, _seeds(setup.seed, tag + [1], prefixes))
    newline = setup.builder.newline_ids
    answer_prompts = [p + t.ids + newline for p, t in zip(prefixes, traces, strict=True)]
    stop = setup.stop_id()
    answers = decoder.sample_answers(
        answer_prompts,
        setup.trace.temperature,
        setup.answer_max_tokens,
        [stop],
        _seeds(setup.seed, tag + [2], prefixes),
    )
    budget = setup.trace.m_max + setup.answer_max_tokens
    return _trl_layout(prefixes, traces, answers, newline, stop, budget, tokenizer)


def _trl_layout(
    prefixes: list[list[int]],
    traces: list[Sampled],
    answers: list[Sampled],
    newline: list[int],
    stop: int,
    budget: int,
    tokenizer: PreTrainedTokenizerBase,
) -> dict[str, list]:
    out: dict[str, list] = {
        k: []
        for k in (
            "prompt_ids",
            "completion_ids",
            "logprobs",
            "env_mask",
            ANSWER_COLUMN,
            "abscot_stopped",
            "abscot_trace_tokens",
            "abscot_length",
        )
    }
    for prefix, z, y in zip(prefixes, traces, answers, strict=True):
        stopped = bool(y.ids) and y.ids[-1] == stop
        out["prompt_ids"].append(prefix)
        out["completion_ids"].append(z.ids + newline + y.ids)
        out["logprobs"].append(z.log_probs + [0.0] * len(newline) + y.log_probs)
        out["env_mask"].append([1] * len(z.ids) + [0] * len(newline) + [1] * len(y.ids))
        text_ids = y.ids[:-1] if stopped else y.ids
        out[ANSWER_COLUMN].append(tokenizer.decode(text_ids, skip_special_tokens=False))
        out["abscot_stopped"].append(stopped)
        out["abscot_trace_tokens"].append(len(z.ids) - 1)
        out["abscot_length"].append((len(z.ids) - 1 + len(text_ids)) / budget)
    return out


def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, list]:
    """TRL's ``rollout_func(prompts, trainer)`` (axolotl: ``trl.rollout_func:
    abscot_plugin.rl.rollout.rollout_func``). Needs the trainer the plugin configured
    (``trainer_cls: abscot_plugin.train.grpo_trainer.AbsCoTGRPOTrainer``). Samples with the rollout
    server when the plugin attached one (``abscot_rollout_server``: weights synced first when the
    optimizer stepped since the last sync), else with transformers on the policy itself."""
    setup = getattr(trainer, "abscot_rl", None)
    if setup is None:
        raise RuntimeError(
            "abscot rollout_func needs the abscot GRPO trainer: set trainer_cls: "
            "abscot_plugin.train.grpo_trainer.AbsCoTGRPOTrainer and plugins: [abscot_plugin.AbsCoTPlugin]"
        )
    setup.calls += 1
    tag = [setup.calls, int(trainer.accelerator.process_index)]
    server = getattr(trainer, "abscot_server", None)
    if server is not None:
        server.sync(trainer)
        return rollout(server.decoder, trainer.processing_class, setup, list(prompts), tag)
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    try:
        decoder = HFDecoder(model, trainer.processing_class, setup.vocab, setup.batch_size)
        return rollout(decoder, trainer.processing_class, setup, list(prompts), tag)
    finally:
        model.train(was_training)


def completion_log_probs(logits: torch.Tensor, completion_ids: torch.Tensor, setup: RLSetup) -> torch.Tensor:
    """Per-token log-probabilities of rollouts under the distributions the rollout sampled from.

    ``logits[b, t]``: the model's scores for completion token ``t`` of row ``b`` (``[B, L, V]``,
    already shifted); ``completion_ids``: ``[B, L]``, right-padded. Stage-1 positions (the leading
    V_abs symbols and the ``<endabstract>`` after them) are scored by
    :func:`samplers.trace_log_probs` at their step; the others by softmax(logits / T) over the whole
    vocabulary (``\n`` and padding too: the loss masks them). Differentiable; float32 ``[B, L]``.
    Raises ValueError for a row whose symbols are not closed by ``<endabstract>``.
    """
    scaled = logits.float() / setup.trace.temperature
    picked = scaled.gather(-1, completion_ids[..., None]).squeeze(-1)
    out = picked - torch.logsumexp(scaled, -1)
    symbols = torch.tensor(setup.vocab.symbol_ids, device=completion_ids.device)
    trace_len = torch.isin(completion_ids, symbols).long().cumprod(-1).sum(-1)  # leading symbols
    closing = completion_ids.gather(-1, trace_len.clamp(max=completion_ids.shape[1] - 1)[:, None]).squeeze(-1)
    if (trace_len >= completion_ids.shape[1]).any() or (closing != setup.vocab.end_id).any():
        row = int(((trace_len >= completion_ids.shape[1]) | (closing != setup.vocab.end_id)).nonzero()[0])
        raise ValueError(f"completion row {row} does not start with a trace closed by <endabstract>")
    for step in range(int(trace_len.max()) + 1):
        rows = (trace_len >= step).nonzero().squeeze(-1)
        allowed, log_probs = trace_log_probs(logits[rows, step], step, setup.vocab, setup.trace)
        where = (allowed[None, :] == completion_ids[rows, step][:, None]).float().argmax(-1)
        out = out.index_put((rows, torch.full_like(rows, step)), log_probs.gather(-1, where[:, None]).squeeze(-1))
    return out
