"""Merge a LoRA adapter trained with the abscot plugin into a full checkpoint (model + extended
tokenizer) that transformers and vLLM load directly (vLLM rejects adapters that carry
``modules_to_save`` embeddings or extra vocabulary).

    python -m abscot_plugin.checkpoints.merge ADAPTER_DIR OUT_DIR [--base BASE] [--num-symbols 64]

The adapter folder is axolotl's ``output_dir``: ``adapter_config.json``, the adapter weights and
the extended tokenizer the plugin wrote. New vocabulary rows are rebuilt exactly as in training
(the plugin's ``init_new_rows`` with the same method and seed) before the adapter is applied, so
rows that the adapter does not carry match what the trainer saw. Trained rows come from the
adapter (``trainable_token_indices`` values or ``modules_to_save`` copies). The merged model must
keep lm_head tied to the embedding (checked), and is written atomically: ``OUT_DIR`` appears
complete or not at all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import get_args

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..core.choices import DEFAULT_INIT, DEFAULT_INIT_SEED, InitMethod
from ..core.fileio import atomic_dir
from ..core.symbols import DEFAULT_NUM_SYMBOLS
from ..tokens.vocab import (
    AbstractVocab,
    check_tied,
    embedding_rows,
    has_abstract_tokens,
    init_new_rows,
    is_tied,
)

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on, as its ``adapter_config.json`` records it."""
    config = Path(adapter_dir) / ADAPTER_CONFIG
    if not config.exists():
        raise FileNotFoundError(f"{adapter_dir}: no {ADAPTER_CONFIG} (not a LoRA adapter folder)")
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config}: base_model_name_or_path is not set; pass --base")
    return base


def load_base(base: str, tokenizer, num_symbols: int, init: str, init_seed: int, dtype: str):
    """The base model as the trainer built it: resized if needed, new rows initialised."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    vocab = AbstractVocab.from_tokenizer(tokenizer, num_symbols)
    if len(tokenizer) > embedding_rows(model):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if not has_abstract_tokens(AutoTokenizer.from_pretrained(base), num_symbols):
        init_new_rows(model, list(vocab.all_ids), init, init_seed)
    return model, vocab


@torch.no_grad()
def merge_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    base: str | None = None,
    num_symbols: int = DEFAULT_NUM_SYMBOLS,
    init: str = "random",
    init_seed: int = DEFAULT_INIT_SEED,
    dtype: str = "auto",
) -> Path:
    """Merge ``adapter_dir`` into its base and save model + tokenizer to ``out_dir``."""
    from peft import PeftModel

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it to merge again")
    base = base or adapter_base(adapter_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        AbstractVocab.from_tokenizer(tokenizer, num_symbols)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{adapter_dir}: needs the extended tokenizer the plugin saved there ({exc})") from None
    model, vocab = load_base(base, tokenizer, num_symbols, init, init_seed, dtype)
    tied = is_tied(model)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    if tied and not is_tied(merged):
        # peft unties on merge when lm_head and the embedding were trained as separate copies
        raise RuntimeError(
            f"{adapter_dir}: lm_head is no longer tied to embed_tokens after merging "
            "(modules_to_save trained without ensure_weight_tying, the reproduction's bug; "
            "the abscot plugin sets peft_ensure_weight_tying for abscot_lora_embeddings: full)"
        )
    check_tied(merged, list(vocab.all_ids))
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: merge ADAPTER_DIR into OUT_DIR; errors are one line (exit 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m abscot_plugin.checkpoints.merge", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("adapter_dir", help="axolotl output_dir of a LoRA run")
    parser.add_argument("out_dir", help="where the merged model goes (must not exist)")
    parser.add_argument("--base", help="base model (default: the adapter's base_model_name_or_path)")
    parser.add_argument("--num-symbols", type=int, default=DEFAULT_NUM_SYMBOLS)
    parser.add_argument(
        "--init",
        choices=get_args(InitMethod),
        default=DEFAULT_INIT,
        help="abscot_init used in training (rebuilds rows the adapter lacks)",
    )
    parser.add_argument("--init-seed", type=int, default=DEFAULT_INIT_SEED, help="abscot_init_seed used in training")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    try:
        out = merge_adapter(
            args.adapter_dir, args.out_dir, args.base, args.num_symbols, args.init, args.init_seed, args.dtype
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(out)


if __name__ == "__main__":
    main()
