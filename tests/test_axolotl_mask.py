"""The bottleneck mask reaches every attention layer in a real `axolotl train` Phase A step (whose
lm_head projects only the labelled positions), and a Phase A batch without ``segment_ids`` is an
error, never a silent causal step."""

from __future__ import annotations

import pytest
import torch
from support import run_axolotl, tiny_config
from transformers import AutoTokenizer

from abscot_plugin.args import RowLayout
from abscot_plugin.core.choices import Phase
from abscot_plugin.core.rows import parse_chat_row
from abscot_plugin.tokens import segments as seg
from abscot_plugin.tokens.sequences import SequenceBuilder
from abscot_plugin.tokens.vocab import AbstractVocab

PROBED = ["abscot_plugin.AbsCoTPlugin", "axolotl_probes.MaskProbe"]


def expected_segments(tok_dir, rows, sequence_len: int) -> dict[tuple[int, ...], list[int]]:
    """input_ids → segment_ids of every Phase A row, built here with SequenceBuilder (round-1
    random traces, seed 0, as the run's config), independently of the trainer and collator."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, 64))
    out = {}
    for row in rows:
        parsed = parse_chat_row(row, row["id"])
        layout = RowLayout(sequence_len, 128, "end")
        ex = builder.example(parsed, builder.random_trace_ids(parsed, 64, 0, layout.m_max), Phase.A, layout)
        out[tuple(ex.input_ids)] = ex.segment_ids
    return out


def padded_segments(batch_ids: torch.Tensor, examples: dict, pad_id: int) -> torch.Tensor:
    """The segment codes of a right-padded batch, each row found among ``examples``."""
    rows = []
    for ids in batch_ids.tolist():
        found = [
            segs
            for key, segs in examples.items()
            if ids[: len(key)] == list(key) and all(i == pad_id for i in ids[len(key) :])
        ]
        assert len(found) == 1, "a batch row is not exactly one dataset row"
        rows.append(found[0] + [seg.PAD] * (len(ids) - len(found[0])))
    return torch.tensor(rows)


@pytest.mark.slow
def test_every_attention_layer_gets_the_bottleneck_mask(tiny_dir, dolci_rows, tmp_path):
    probe = tmp_path / "probe.pt"
    cfg = tiny_config("a", tiny_dir, tmp_path / "out", tmp_path, max_steps=1, plugins=PROBED)
    proc = run_axolotl(cfg, tmp_path, "probe", ABSCOT_PROBE_OUT=str(probe))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    seen = torch.load(probe)
    ids = seen["input_ids"]
    assert ids.shape[0] == cfg["micro_batch_size"]
    assert len(seen["masks"]) == 2  # the tiny model's two layers

    tok_dir = tmp_path / "out"  # the extended tokenizer the run saved
    examples = expected_segments(tok_dir, dolci_rows, cfg["sequence_len"])
    segments = padded_segments(ids, examples, AutoTokenizer.from_pretrained(tok_dir).pad_token_id)
    expected = seg.dense_mask(segments)
    answer_cot = (segments[:, :, None] == seg.ANSWER) & (segments[:, None, :] == seg.COT)
    assert answer_cot.any()
    for mask in seen["masks"]:
        assert mask.dtype == torch.bool and mask.shape == (ids.shape[0], 1, ids.shape[1], ids.shape[1])
        assert torch.equal(mask, expected)
        assert not mask[:, 0][answer_cot].any()
    # loss-only logits: the lm_head saw the positions whose next token has a label in some row
    labelled = int((seen["labels"][:, 1:] != -100).any(0).sum())
    assert 0 < seen["lm_head_positions"] == labelled < ids.shape[1]


@pytest.mark.slow
def test_phase_a_batch_without_segment_ids_fails_loudly(tiny_dir, tmp_path):
    cfg = tiny_config("a", tiny_dir, tmp_path / "out", tmp_path, max_steps=1, plugins=PROBED)
    proc = run_axolotl(cfg, tmp_path, "broken", ABSCOT_PROBE_DROP_SEGMENTS="1")
    assert proc.returncode != 0
    assert "(abscot_plugin.train.bottleneck) batch has no 'segment_ids'" in proc.stdout + proc.stderr


def test_trainer_refuses_a_batch_without_segment_ids():
    from abscot_plugin.train.trainer import AbsCoTTrainer

    trainer = AbsCoTTrainer.__new__(AbsCoTTrainer)  # no config handed over yet: Phase A is assumed
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "labels": torch.zeros(1, 4, dtype=torch.long)}
    # the check comes first, before the trainer or model is used: no trainer needs building
    with pytest.raises(ValueError, match=r"no 'segment_ids' \(keys: \['input_ids', 'labels'\]\)"):
        trainer.compute_loss(None, batch)


def test_both_formats_get_abscot_trainer_and_only_phase_a_masks():
    from abscot_plugin.plugin import AbsCoTPlugin
    from abscot_plugin.train.trainer import AbsCoTTrainer

    plugin = AbsCoTPlugin()
    trainer = AbsCoTTrainer.__new__(AbsCoTTrainer)
    for phase, masks in ((Phase.A, True), (Phase.B, False)):
        cfg = {"datasets": [{"type": phase.dataset_type}]}
        assert plugin.get_trainer_cls(cfg) is AbsCoTTrainer
        trainer.axolotl_cfg = cfg
        assert trainer.bottleneck is masks
    assert plugin.get_trainer_cls({"datasets": [{"type": "chat_template"}]}) is None
