"""Prompt strings, shared by training, trace generation and evaluation.

Every path that builds a prompt goes through :func:`prompt_text`, so train and decode prompts are
byte-identical (Qwen3's template inserts an empty think block with ``enable_thinking=False``;
using it everywhere is what keeps the two the same). Their token ids come from
:mod:`abscot_plugin.tokens.tokenization`, which keeps every message content (and the CoT and answer)
plain text: a prompt, CoT or answer that mentions ``<TOKEN_A>``, ``<beginabstract>`` or
``<|im_end|>`` is tokenised like any other text, not rejected. Rows are parsed by
:mod:`abscot_plugin.core.rows`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# the chat template's end of a turn (Qwen3's): the last token of every training row's answer, the
# stop token of answers at evaluation and in RL rollouts
END_OF_TURN = "<|im_end|>"
MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt x: chat template, generation prompt, thinking mode off."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def math_messages(problem: str, system: str | None = MATH_SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Messages for a math problem as in the paper's evaluation."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": problem}]
