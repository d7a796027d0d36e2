"""Reward functions of the RL stage, with TRL's signature
``f(prompts, completions, completion_ids=..., **columns) -> list[float]``; name them in a GRPO
config as ``trl.reward_funcs`` (with ``trl.reward_weights``), e.g.::

    trl:
      reward_funcs: [abscot_plugin.rl.rewards.math_reward, abscot_plugin.rl.rewards.format_reward]
      reward_weights: [1.0, 0.1]

TRL logs each one as ``rewards/<name>/mean`` and ``/std``. They read the answer text the rollout
passes (``abscot_answer``: decoded from ids with special tokens kept, the stop token dropped;
TRL's own ``completions`` are decoded with ``skip_special_tokens=True``, which drops the trace
and would also drop an abstract token the answer spelled out) and the row's ``gold``
(:mod:`abscot_plugin.rl.rl_data`).

* :func:`math_reward` (the default): 1 if the last ``\\boxed{}`` of the answer equals the gold
  answer (:func:`abscot_plugin.eval.scoring.score_answer`: math-verify, the units rule), else 0;
* :func:`format_reward` (optional): 1 if the answer stopped on its own (``<|im_end|>`` within the
  budget) with a ``\\boxed{}`` in it, else 0;
* :func:`length_reward` (optional): 1 minus the share of the token budget the trace and answer
  used (``abscot_length``), a pull towards short outputs.

The paper's LLM-judge reward lives in :mod:`abscot_plugin.rl.judge` (its own settings); it takes
the same keyword arguments. No torch, no axolotl.
"""

from __future__ import annotations

from typing import Any

from ..eval.scoring import last_boxed, score_answer


def _column(name: str, values: list | None, completions: list[Any]) -> list:
    """The rollout's per-completion column ``name``; ValueError if absent or of the wrong length."""
    if values is None:
        raise ValueError(
            f"abscot rewards need the abscot rollout (trl.rollout_func: abscot_plugin.rl.rollout.rollout_func), "
            f"whose {name} column they read"
        )
    if len(values) != len(completions):
        raise ValueError(f"{name}: {len(values)} values for {len(completions)} completions")
    return values


def math_reward(
    prompts: list[Any],
    completions: list[Any],
    gold: list[str] | None = None,
    abscot_answer: list[str] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 where the answer's last boxed expression equals ``gold``, else 0.0."""
    answers = _column("abscot_answer", abscot_answer, completions)
    if gold is None:
        raise ValueError("math_reward needs the 'gold' column: use type: abscot_plugin.rl_prompts for the dataset")
    return [float(score_answer(a, g).correct) for a, g in zip(answers, gold, strict=True)]


def format_reward(
    prompts: list[Any],
    completions: list[Any],
    abscot_answer: list[str] | None = None,
    abscot_stopped: list[bool] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 where the answer ended with its stop token and contains a ``\\boxed{}``, else 0.0."""
    answers = _column("abscot_answer", abscot_answer, completions)
    stopped = _column("abscot_stopped", abscot_stopped, completions)
    return [float(s and last_boxed(a) is not None) for a, s in zip(answers, stopped, strict=True)]


def length_reward(
    prompts: list[Any],
    completions: list[Any],
    abscot_length: list[float] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1 - (trace + answer tokens) / (m_max + answer budget): shorter outputs earn more."""
    return [1.0 - share for share in _column("abscot_length", abscot_length, completions)]
