"""The names of the abstract vocabulary V_abs (no torch: trace files, the orchestrator and the vLLM
environment read them too; :mod:`abscot_plugin.tokens.vocab` maps them to a tokenizer's ids).

M symbols ``<TOKEN_A>`` … ``<TOKEN_Z>``, ``<TOKEN_AA>`` … ``<TOKEN_ZZ>`` (index i < 26: one letter;
else j = i - 26: letters j // 26 and j % 26), then the delimiters ``<beginabstract>`` and
``<endabstract>``. With the default M = 64 the last symbol is ``<TOKEN_BL>``.
"""

from __future__ import annotations

import string

BEGIN = "<beginabstract>"
END = "<endabstract>"
DEFAULT_NUM_SYMBOLS = 64
MAX_NUM_SYMBOLS = 26 + 26 * 26


def symbol_name(index: int) -> str:
    """Name of symbol ``index``: one letter below 26, then two letters (``AA``, ``AB``, …)."""
    if not 0 <= index < MAX_NUM_SYMBOLS:
        raise ValueError(f"symbol index {index} outside [0, {MAX_NUM_SYMBOLS})")
    letters = string.ascii_uppercase
    if index < 26:
        return f"<TOKEN_{letters[index]}>"
    j = index - 26
    return f"<TOKEN_{letters[j // 26]}{letters[j % 26]}>"


def symbol_names(num_symbols: int = DEFAULT_NUM_SYMBOLS) -> list[str]:
    """The ``num_symbols`` abstract symbol names, in id order."""
    if not 1 <= num_symbols <= MAX_NUM_SYMBOLS:
        raise ValueError(f"num_symbols must be in [1, {MAX_NUM_SYMBOLS}], got {num_symbols}")
    return [symbol_name(i) for i in range(num_symbols)]


def all_token_names(num_symbols: int = DEFAULT_NUM_SYMBOLS) -> list[str]:
    """Symbols then the two delimiters: every token the vocabulary adds."""
    return symbol_names(num_symbols) + [BEGIN, END]
