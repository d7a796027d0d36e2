"""Loss-only logits (abscot_plugin.train.loss_logits, the trainer's compute_loss): the lm_head projects
only the positions the loss reads, and the loss and every parameter gradient equal those of the
full-logits forward — Phase A with the bottleneck mask and Phase B, a padded batch of two, full
fine-tuning of the tied model and LoRA with trainable V_abs rows, with and without axolotl's
``num_items_in_batch`` normalisation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from abscot_plugin.args import RowLayout
from abscot_plugin.core.choices import Phase
from abscot_plugin.core.rows import parse_chat_row
from abscot_plugin.tokens.segments import bottleneck_attention_mask
from abscot_plugin.tokens.sequences import IGNORE
from abscot_plugin.train.loss_logits import loss_only_inputs

LAYOUT = RowLayout(sequence_len=4096, m_max=128, cot_keep="end")


def test_loss_only_inputs_keep_the_union_of_labelled_positions():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    out = loss_only_inputs(labels)
    assert out["logits_to_keep"].tolist() == [0, 1, 2]
    assert out["shift_labels"].tolist() == [[IGNORE, 5, 6], [7, IGNORE, IGNORE]]
    # labels shifted by the caller (context parallelism) are taken as they are
    given = torch.tensor([[IGNORE, 3, IGNORE, 4]])
    assert loss_only_inputs(labels[:1], given)["logits_to_keep"].tolist() == [1, 3]
    with pytest.raises(ValueError, match="B × S labels"):
        loss_only_inputs(labels[0])


@pytest.fixture(scope="module")
def training_args(tmp_path_factory):
    from axolotl.core.training_args import AxolotlTrainingArguments

    return AxolotlTrainingArguments(output_dir=str(tmp_path_factory.mktemp("trainer")), report_to=[], use_cpu=True)


def padded_batch(builder, vocab, tokenizer, rows, phase: Phase) -> dict[str, torch.Tensor]:
    """Two rows of different lengths, right-padded by the collator the phase trains with."""
    from abscot_plugin.train.collator import SegmentCollator

    features = []
    for row, trace_len in zip(rows, (7, 30), strict=True):
        ex = builder.example(parse_chat_row(row, row["id"]), list(vocab.symbol_ids[:trace_len]), phase, LAYOUT)
        feature = {"input_ids": ex.input_ids, "attention_mask": [1] * len(ex.input_ids), "labels": ex.labels}
        if phase.has_cot:
            feature["segment_ids"] = ex.segment_ids
        features.append(feature)
    batch = SegmentCollator(tokenizer, padding=True, return_tensors="pt")(features)
    assert (batch["labels"] == IGNORE).any(1).all() and (batch["attention_mask"] == 0).any()  # padded
    return dict(batch)


def build_model(tiny_dir, vocab, train: str):
    """The tiny tied Qwen3, fully trainable or LoRA (random A and B) with trainable V_abs rows."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    if train == "lora_new_rows":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules="all-linear",
            init_lora_weights=False,
            trainable_token_indices={"embed_tokens": list(vocab.all_ids)},
        )
        model = get_peft_model(model, config)
        with torch.no_grad():  # move the V_abs rows off their base values, as training would
            for name, param in model.named_parameters():
                if "trainable_tokens_delta" in name:
                    param.add_(torch.randn_like(param) * 0.1)
    return model.train()


def loss_and_grads(model, run) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[int]]:
    """``run()``'s loss, the gradient of every trainable parameter, and how many positions the
    lm_head projected in each of its calls."""
    seen: list[int] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        model.zero_grad(set_to_none=True)
        loss = run()
        loss.backward()
    finally:
        hook.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, seen


@pytest.mark.parametrize("train", ["full", "lora_new_rows"])
@pytest.mark.parametrize("phase", list(Phase))
def test_loss_and_gradients_equal_the_full_logits_ones(
    phase, train, tiny_dir, builder, vocab, tiny_tokenizer, dolci_rows, training_args
):
    from axolotl.utils.dict import DictDefault

    from abscot_plugin.train.trainer import AbsCoTTrainer

    batch = padded_batch(builder, vocab, tiny_tokenizer, dolci_rows[1:3], phase)
    model = build_model(tiny_dir, vocab, train)
    trainer = AbsCoTTrainer(model=model, args=training_args)
    trainer.axolotl_cfg = DictDefault({"datasets": [{"type": phase.dataset_type}]})
    assert trainer.bottleneck == (phase is Phase.A)
    seq = batch["input_ids"].shape[1]
    labelled = int((batch["labels"][:, 1:] != IGNORE).any(0).sum())
    assert labelled < seq / 2
    base = model.get_base_model() if train != "full" else model
    if phase is Phase.A:
        mask = bottleneck_attention_mask(base.config, batch["segment_ids"], torch.float32)
    else:
        mask = batch["attention_mask"]

    for num_items in (None, 150):  # axolotl passes num_items_in_batch when the model takes it
        extra = {} if num_items is None else {"num_items_in_batch": num_items}
        trainer.model_accepts_loss_kwargs = num_items is not None

        def full_logits(extra=extra):
            return model(input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"], **extra).loss

        def ours(num_items=num_items):
            return trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)

        want, want_grads, want_seen = loss_and_grads(model, full_logits)
        got, got_grads, got_seen = loss_and_grads(model, ours)
        assert want_seen == [seq] and got_seen == [labelled]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert got_grads.keys() == want_grads.keys() and len(got_grads) > 0
        if train == "lora_new_rows":
            assert any("trainable_tokens_delta" in n for n in got_grads)
            assert any("lora_A" in n for n in got_grads)
        for name, grad in want_grads.items():
            scale = grad.abs().max().item()
            assert scale > 0, name
            # fp32: the two sum the same terms in another order; 1e-5 of the tensor's largest entry
            torch.testing.assert_close(
                got_grads[name], grad, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, name=name: f"{name}: {m}"
            )


def test_evaluation_keeps_every_positions_logits(tiny_dir, builder, vocab, tiny_tokenizer, dolci_rows, training_args):
    """return_outputs=True (evaluation): the caller may read the logits, so all are computed."""
    from abscot_plugin.train.trainer import AbsCoTTrainer

    batch = padded_batch(builder, vocab, tiny_tokenizer, dolci_rows[1:3], Phase.A)
    model = build_model(tiny_dir, vocab, "full")
    trainer = AbsCoTTrainer(model=model, args=training_args)
    with torch.no_grad():
        _, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert outputs.logits.shape[:2] == batch["input_ids"].shape
