"""LoRA merging (abscot_plugin.checkpoints.merge): merged logits equal base + adapter logits, tie kept.

The adapter trained by ``axolotl train`` is merged and checked the same way in
tests/test_orchestrate.py (round 1 of the end-to-end run).
"""

from __future__ import annotations

import pytest
import torch

from abscot_plugin.checkpoints.merge import main, merge_adapter
from abscot_plugin.tokens.vocab import add_abstract_tokens, init_new_rows


@pytest.fixture(scope="module")
def base_dir(tiny_dir):
    """The tiny base without V_abs (conftest), as training starts from it in round 1."""
    return tiny_dir


def trained_adapter(base_dir, out_dir, **lora_kwargs):
    """A real peft adapter on the tiny base, as the plugin sets it up, with non-zero weights
    (random values stand in for training). Returns the peft model and the V_abs ids."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    vocab = add_abstract_tokens(tok)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    init_new_rows(model, list(vocab.all_ids), "random", 0)  # the plugin's post_model_build
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **lora_kwargs)
    if "trainable_token_indices" in lora_kwargs:
        config.trainable_token_indices = {"embed_tokens": list(vocab.all_ids)}
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return peft_model.eval(), list(vocab.all_ids)


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def sample_ids(abstract_ids):
    return [5, 17, 42, abstract_ids[-2], *abstract_ids[:6], abstract_ids[-1], 9, 33]


@pytest.mark.parametrize(
    "lora_kwargs",
    [dict(trainable_token_indices=True), dict(modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True)],
    ids=["trainable_tokens", "modules_to_save"],
)
def test_merged_logits_equal_adapter_logits(base_dir, tmp_path, lora_kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_model, abstract = trained_adapter(base_dir, tmp_path / "adapter", **lora_kwargs)
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged", base=str(base_dir))
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    ids = sample_ids(abstract)
    torch.testing.assert_close(logits(merged, ids), logits(peft_model, ids), rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<endabstract>") == abstract[-1]


def test_untied_adapter_is_refused(base_dir, tmp_path):
    """modules_to_save without the tie (the reproduction's bug) must not merge silently."""
    trained_adapter(base_dir, tmp_path / "adapter", modules_to_save=["embed_tokens", "lm_head"])
    with pytest.raises(RuntimeError, match="no longer tied"):
        merge_adapter(tmp_path / "adapter", tmp_path / "merged", base=str(base_dir))
    assert not (tmp_path / "merged").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no adapter_config.json"):
        main([str(tmp_path), str(tmp_path / "out")])
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit, match="already exists"):
        main([str(tmp_path), str(tmp_path / "out")])
