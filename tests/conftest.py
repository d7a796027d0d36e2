"""Shared fixtures: the tiny random Qwen3 (plain and with V_abs) built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for key, value in {
    "AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny random Qwen3 + tokenizer without the abstract vocabulary (like a hub base model)."""
    from abscot_plugin.fixtures import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    """The tiny tokenizer extended with V_abs (a fresh copy per session)."""
    from transformers import AutoTokenizer

    from abscot_plugin.vocab import add_abstract_tokens

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    add_abstract_tokens(tok)
    return tok


@pytest.fixture(scope="session")
def vocab(tiny_tokenizer):
    from abscot_plugin.vocab import AbstractVocab

    return AbstractVocab.from_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="session")
def builder(tiny_tokenizer, vocab):
    from abscot_plugin.sequences import SequenceBuilder

    return SequenceBuilder(tiny_tokenizer, vocab)


@pytest.fixture(scope="session")
def dolci_rows() -> list[dict]:
    import json

    from abscot_plugin.fixtures import data_path

    return [json.loads(line) for line in data_path("dolci_tiny.jsonl").read_text().splitlines()]
