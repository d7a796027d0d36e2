"""RL prompts: ``type: abscot_plugin.rl_prompts`` in a GRPO config's ``datasets``.

Each JSONL row is a math problem with a gold answer, MATH-style or GSM8K-style::

    {"problem": "Compute $1+1$.", "answer": "2"}                        -> prompt, gold "2"
    {"question": "Tom has 3 ...", "answer": "... #### 7"}               -> prompt, gold "7"

and becomes ``{"prompt": <problem text>, "gold": <gold answer>}``: the rollout builds the
evaluation prompt from ``prompt`` (:func:`abscot_plugin.rl.rollout.rollout_func`) and the rewards read
``gold`` (:mod:`abscot_plugin.rl.rewards`). A row without a problem or a gold answer, or whose gold
answer math-verify cannot read as mathematics (:func:`~abscot_plugin.eval.scoring.reads_math`), stops
data loading with an error naming the row (its 0-based index among the file's rows, as
``datasets`` counts them, and its ``id`` field if any); the orchestrator runs the same check
while planning: a reward that can never be earned is a data error. No
torch, no axolotl.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..eval.scoring import gsm8k_gold, parse_gold, reads_math

PROMPT_FIELD = "prompt"  # what TRL hands to rollout_func
GOLD_FIELD = "gold"  # what the rewards read (a keyword argument of each reward function)
ANSWER_COLUMN = "abscot_answer"  # the rollout's answer text (special tokens kept), read by the rewards and the judge


def _name(row: dict[str, Any], index: int) -> str:
    return f"RL prompts row {index}" + (f" (id {row['id']!r})" if row.get("id") is not None else "")


def prompt_and_gold(row: dict[str, Any], index: int) -> dict[str, str]:
    """``{"prompt", "gold"}`` of one RL row (module doc); ValueError naming the row if unusable."""
    if row.get("problem") is not None:
        problem, gold = row["problem"], row.get("answer")
    elif row.get("question") is not None:
        problem, gold = row["question"], row.get("answer")
        if isinstance(gold, str):
            try:
                gold = gsm8k_gold(gold)
            except ValueError as err:
                raise ValueError(f"{_name(row, index)}: {err}") from None
    else:
        keys = sorted(k for k, v in row.items() if v is not None)
        raise ValueError(f"{_name(row, index)}: needs 'problem' (MATH) or 'question' (GSM8K) and 'answer'; has {keys}")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"{_name(row, index)}: the problem is empty or not text")
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"{_name(row, index)}: no gold answer (an 'answer' string is needed)")
    try:
        parsed = parse_gold(gold)
    except ValueError as err:
        raise ValueError(f"{_name(row, index)}: {err}") from None
    if not reads_math(parsed):
        raise ValueError(f"{_name(row, index)}: math-verify reads no mathematical object from the gold answer {gold!r}")
    return {PROMPT_FIELD: problem, GOLD_FIELD: gold}


def rl_prompts(cfg: Any, dataset_idx: int = 0, **kwargs: Any) -> tuple[Callable, dict[str, Any]]:
    """axolotl's RL dataset-transform entry point: the row transform and its ``map`` arguments."""
    return prompt_and_gold, {"with_indices": True, "remove_columns": "__all__"}
