"""Phase B throughput, padded micro-batches against sample packing, through axolotl's own
collators and multipack sampler, on rows of Qwen3's real token counts.

    python bench/phase_b_packing.py                  # medium random Qwen3, CPU
    python bench/phase_b_packing.py --micro-batches 1,8,16 --repeats 3

Rows: the shipped Dolci rows laid out for Phase B (x <beginabstract> z <endabstract> y, round-1
random traces of seed k for copy k) by Qwen3's real tokenizer, so each row has a real Qwen3
length and label span (``bench/token_stats.py``: 121 tokens on average, 206 at most). The ids are
then folded into the model's 896-row vocabulary (``id % 896``): a step's cost depends on shapes,
and an embedding of 151,936 rows would make the lm_head dominate a 4-layer model unlike a 36-layer
one.

Variants, one pass over the rows each (forward + backward, loss-only logits as the trainer):
* ``padded mb=k``: ``DataCollatorForSeq2Seq`` (padding to the longest row, ``pad_to_multiple_of``
  64 as axolotl's builder sets it), a random sampler, k rows a step: what the configs train with;
* ``packed``: ``MultipackBatchSampler`` (bins of ``sequence_len`` tokens, axolotl's bin and group
  sizes) and ``V2BatchSamplerDataCollatorForSeq2Seq``, ``position_ids`` per row and no
  attention mask, as axolotl packs for SDPA/flex: transformers builds the block-diagonal causal
  mask from the ``position_ids`` (checked: the packed loss equals the rows' own losses).

Read rows/s (examples/s). On a CPU the packed step's SDPA attention is dense over the whole bin
(S² for S = sequence_len), where a GPU's flex kernel skips the blocks between rows; padded
micro-batches pay for their padding instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abscot_plugin.args import AbsCoTArgs, RowLayout  # noqa: E402
from abscot_plugin.core.choices import Phase  # noqa: E402
from abscot_plugin.core.rows import parse_chat_row, read_rows  # noqa: E402
from abscot_plugin.testing.fixtures import build_qwen3_tokenizer, build_tokenizer, data_path  # noqa: E402
from abscot_plugin.tokens.sequences import IGNORE, SequenceBuilder  # noqa: E402
from abscot_plugin.tokens.vocab import AbstractVocab, add_abstract_tokens  # noqa: E402
from abscot_plugin.train.loss_logits import loss_only_inputs  # noqa: E402
from bench.common import interleaved, machine, paired_ratio, report  # noqa: E402
from bench.mask_step import VOCAB_ROWS, build_model, model_config  # noqa: E402

DEFAULTS = AbsCoTArgs()  # training's defaults: V_abs size, m_max
M_MAX, NUM_SYMBOLS = DEFAULTS.abscot_m_max, DEFAULTS.abscot_num_symbols


def phase_b_rows(copies: int, sequence_len: int) -> list[dict[str, list[int]]]:
    """``copies`` × the Dolci rows as Phase B examples in Qwen3 tokens, ids folded into the model."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = AutoTokenizer.from_pretrained(build_qwen3_tokenizer(tmp))
    add_abstract_tokens(tok, NUM_SYMBOLS)
    builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, NUM_SYMBOLS))
    dolci = read_rows(data_path("dolci_tiny.jsonl"))
    layout = RowLayout.from_cfg({"sequence_len": sequence_len})  # training's m_max and cot_keep
    rows = []
    for seed in range(copies):
        for row_id, row in dolci:
            parsed = parse_chat_row(row, row_id)
            trace = builder.random_trace_ids(parsed, NUM_SYMBOLS, seed, M_MAX)
            ex = builder.example(parsed, trace, Phase.B, layout)
            ids = [i % VOCAB_ROWS for i in ex.input_ids]
            labels = [IGNORE if label == IGNORE else i for i, label in zip(ids, ex.labels, strict=True)]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


class CountingCollator:
    """An axolotl collator that also counts the rows it has collated (a packed batch arrives as
    a list of bins, each a list of rows)."""

    def __init__(self, collate):
        self.collate, self.rows = collate, 0

    def __call__(self, features):
        self.rows += sum(len(f) for f in features) if isinstance(features[0], list) else len(features)
        return self.collate(features)


def loaders(rows: list[dict], micro_batches: list[int], sequence_len: int, seed: int) -> dict[str, object]:
    """One DataLoader per variant, built as axolotl builds them."""
    from axolotl.monkeypatch.data.batch_dataset_fetcher import apply_multipack_dataloader_patch
    from axolotl.utils.collators import DataCollatorForSeq2Seq, V2BatchSamplerDataCollatorForSeq2Seq
    from axolotl.utils.samplers import MultipackBatchSampler, get_dataset_lengths
    from axolotl.utils.trainer import add_position_ids
    from datasets import Dataset
    from torch.utils.data import DataLoader, RandomSampler

    apply_multipack_dataloader_patch()  # the DataLoader fetches packed bins as axolotl's trainer does
    tok = build_tokenizer()  # pads with an id inside the model's vocabulary (the ids are folded)
    padded = Dataset.from_list(rows)
    out = {}
    for k in micro_batches:
        collate = DataCollatorForSeq2Seq(tok, padding=True, pad_to_multiple_of=64, return_tensors="pt")
        sampler = RandomSampler(padded, generator=torch.Generator().manual_seed(seed))
        out[f"padded mb={k}"] = DataLoader(
            padded, batch_size=k, sampler=sampler, collate_fn=CountingCollator(collate), drop_last=True
        )
    # axolotl's packing pipeline: position_ids and length, the attention mask dropped (SDPA / flex)
    packed = padded.map(add_position_ids).remove_columns(["attention_mask"])
    sampler = MultipackBatchSampler(
        RandomSampler(packed, generator=torch.Generator().manual_seed(seed)),
        batch_size=1,
        batch_max_len=sequence_len,
        lengths=get_dataset_lengths(packed),
        bin_size=200,
        group_size=100_000,
        drop_last=True,
        num_processes=1,
    )
    collate = V2BatchSamplerDataCollatorForSeq2Seq(tok, padding=True, pad_to_multiple_of=64, return_tensors="pt")
    out["packed"] = DataLoader(
        packed.remove_columns(["length"]), batch_sampler=sampler, collate_fn=CountingCollator(collate)
    )
    return out


def train_pass(model, loader, counts: dict[str, int], name: str):
    """A callable: one pass over ``loader`` (forward + backward per batch); records rows and tokens."""

    def run() -> None:
        tokens, start = 0, loader.collate_fn.rows
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids", "labels")}
            out = model(**inputs, **loss_only_inputs(inputs["labels"]), use_cache=False)
            out.loss.backward()
            model.zero_grad(set_to_none=True)
            tokens += int(batch["input_ids"].numel())
        counts[name], counts[name + " tokens"] = loader.collate_fn.rows - start, tokens

    return run


def packed_loss_is_per_row(model, loader) -> float:
    """Largest |summed packed loss − sum of each row's own summed loss| over the first bin."""
    batch = next(iter(loader))
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    with torch.no_grad():
        # no cache: transformers detects packed rows from position_ids only without one
        packed = model(input_ids=ids, position_ids=pos, labels=labels, num_items_in_batch=1, use_cache=False).loss
        starts = (pos[0] == 0).nonzero().flatten().tolist() + [int((pos[0] >= 0).sum())]
        alone = sum(
            model(input_ids=ids[:, a:b], labels=labels[:, a:b], num_items_in_batch=1, use_cache=False).loss
            for a, b in zip(starts[:-1], starts[1:], strict=True)
        )
    return abs(float(packed - alone)) / float(alone)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="medium", help="tiny or medium (bench/mask_step.py)")
    parser.add_argument("--micro-batches", default="1,4,8,16")
    parser.add_argument("--copies", type=int, default=4, help="passes over the 48 Dolci rows per epoch")
    parser.add_argument("--sequence-len", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default="phase_b_packing", help="JSON name under build/bench/")
    args = parser.parse_args(argv)
    micro_batches = [int(k) for k in args.micro_batches.split(",")]
    device = torch.device("cpu")
    rows = phase_b_rows(args.copies, args.sequence_len)
    model = build_model(model_config(args.model), "sdpa", device, torch.float32)
    runs = loaders(rows, micro_batches, args.sequence_len, seed=0)
    check = packed_loss_is_per_row(model, runs["packed"])
    counts: dict[str, int] = {}
    samples = interleaved(
        {name: train_pass(model, loader, counts, name) for name, loader in runs.items()},
        args.repeats,
        args.warmup,
        device,
        "phase B passes",
    )
    base = samples["padded mb=1"]
    table = []
    for name, result in samples.items():
        speed = paired_ratio(base, result)  # time of mb=1 / time of this = speed-up in rows/s (same rows)
        table.append(
            {
                "variant": name,
                "rows": counts[name],
                "tokens": counts[name + " tokens"],
                "s_per_pass": result.median_s,
                "rows_s": counts[name] / result.median_s,
                "tokens_s": counts[name + " tokens"] / result.median_s,
                "speed_text": speed["text"]
                if counts[name] == counts["padded mb=1"]
                else f"{base.median_s / result.median_s * counts[name] / counts['padded mb=1']:.2f} (rows differ)",
                "peak_mib": result.peak_mib,
                "samples": result.summary(),
            }
        )
    lengths = [len(r["input_ids"]) for r in rows]
    columns = [
        ("variant", "variant", ""),
        ("rows", "rows/pass", ""),
        ("tokens", "tokens/pass (padded)", ""),
        ("s_per_pass", "s/pass", ".2f"),
        ("rows_s", "rows/s", ".1f"),
        ("tokens_s", "tokens/s", ".0f"),
        ("speed_text", "rows/s vs padded mb=1 [range]", ""),
        ("peak_mib", "peak MiB", ".0f"),
    ]
    notes = [
        f"{len(rows)} Phase B rows of Qwen3 lengths: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)} "
        f"tokens; {args.model} model (bench/mask_step.py), float32, SDPA, loss-only logits; sequence_len "
        f"{args.sequence_len}",
        f"medians of {args.repeats} interleaved passes after {args.warmup} warm-up; speed-up: median and range "
        "of the per-repeat time ratios (the same rows in every variant; multipack drops a last partial bin)",
        f"packed loss check: |packed − rows alone| / rows alone = {check:.1e} (block-diagonal mask from position_ids)",
    ]
    report(
        args.out,
        "Phase B throughput: padded micro-batches vs sample packing (axolotl collators)",
        machine(),
        table,
        columns,
        notes,
        extra={"args": vars(args), "lengths": lengths},
    )


if __name__ == "__main__":
    main()
