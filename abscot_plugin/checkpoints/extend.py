"""Write a base model extended with the abstract vocabulary (model + tokenizer), for vLLM and
for use outside axolotl.

    python -m abscot_plugin.checkpoints.extend Qwen/Qwen3-4B out/qwen3-4b-abs [--num-symbols 64] [--init random]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..core.choices import DEFAULT_INIT, DEFAULT_INIT_SEED, InitMethod
from ..core.symbols import DEFAULT_NUM_SYMBOLS
from ..tokens.vocab import add_abstract_tokens, check_tied, embedding_rows, has_abstract_tokens, init_new_rows


def extend_model(
    base: str,
    out_dir: str | Path,
    num_symbols: int = DEFAULT_NUM_SYMBOLS,
    init: InitMethod = DEFAULT_INIT,
    seed: int = DEFAULT_INIT_SEED,
    dtype: str = "auto",
) -> Path:
    """Add V_abs to ``base``'s tokenizer, initialise the new rows, save both to ``out_dir``."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if has_abstract_tokens(tokenizer, num_symbols):
        raise SystemExit(f"{base} already has the abstract vocabulary; nothing to extend")
    vocab = add_abstract_tokens(tokenizer, num_symbols)
    if len(tokenizer) > embedding_rows(model):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    init_new_rows(model, list(vocab.all_ids), init, seed)
    check_tied(model, list(vocab.all_ids))
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="model name or folder")
    parser.add_argument("out_dir")
    parser.add_argument("--num-symbols", type=int, default=DEFAULT_NUM_SYMBOLS)
    parser.add_argument("--init", choices=get_args(InitMethod), default=DEFAULT_INIT)
    parser.add_argument("--seed", type=int, default=DEFAULT_INIT_SEED)
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float32, …")
    args = parser.parse_args(argv)
    with torch.no_grad():
        print(extend_model(args.base, args.out_dir, args.num_symbols, args.init, args.seed, args.dtype))


if __name__ == "__main__":
    main()
