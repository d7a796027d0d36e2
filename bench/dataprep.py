"""Data preparation rate: our Phase A (``abscot_plugin.train.bottleneck``) and Phase B
(``abscot_plugin.train.self_distill``) strategies against axolotl's own ``chat_template`` strategy on the
same Dolci-Think rows, through axolotl's ``TokenizedPromptDataset`` (the path ``axolotl
preprocess``/``train`` takes), plus collation of a Phase A batch; and a check that nothing on the
CPU side builds a B×S×S tensor (the collated batch holds only B×S tensors).

    python bench/dataprep.py [--rows 192] [--long-rows 24] [--cot-repeat 14] [--repeats 3]

Two row sets: "short" (the shipped tiny rows, repeated with fresh ids) and "long" (each CoT
repeated ``--cot-repeat`` times: ~2k tokens, all within sequence_len 8192, so that no variant
cuts anything and all do the same work).
``chat_template`` tokenises the whole conversation (system/user/assistant with the verbal
``<think>`` block); Phase A adds the trace and segment ids, Phase B drops the CoT and adds the
trace (given in each row's ``abstract_trace``, as a trace file would).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abscot_plugin.testing.fixtures import build_tokenizer  # noqa: E402
from abscot_plugin.tokens.vocab import add_abstract_tokens  # noqa: E402
from bench.common import dolci_rows, interleaved, machine, paired_ratio, report  # noqa: E402

SEQUENCE_LEN = 8192


def strategies(tokenizer) -> dict:
    """The three strategies, loaded the way axolotl loads a dataset's ``type``."""
    from axolotl.integrations.base import PluginManager
    from axolotl.prompt_strategies import load
    from axolotl.utils.dict import DictDefault

    PluginManager.get_instance().register("abscot_plugin.AbsCoTPlugin")
    cfg = DictDefault(
        sequence_len=SEQUENCE_LEN,
        train_on_inputs=False,
        abscot_num_symbols=64,
        abscot_m_max=128,
        abscot_cot_keep="end",
        abscot_trace_seed=0,
        abscot_skip_bad_rows=False,
        abscot_id_field="id",
    )
    chat_cfg = {"type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"]}
    return {
        "phase_a": load("abscot_plugin.train.bottleneck", tokenizer, cfg, {}),
        "phase_b": load("abscot_plugin.train.self_distill", tokenizer, cfg, {}),
        "chat_template": load("chat_template", tokenizer, cfg, chat_cfg),
    }


def tokenize(strategy, rows: list[dict]):
    """Run ``strategy`` over ``rows`` through axolotl's TokenizedPromptDataset (one process)."""
    from axolotl.datasets import TokenizedPromptDataset
    from datasets import Dataset

    return TokenizedPromptDataset(strategy, Dataset.from_list(rows), process_count=1, keep_in_memory=True)


class LargestTensor(TorchDispatchMode):
    """Records the shape of the largest tensor any torch op produces while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0
        self.shape: tuple[int, ...] = ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape = t.numel(), tuple(t.shape)
        return out


def check_no_bxsxs(collator, features: list[dict]) -> dict:
    """Collate a Phase A batch and fail unless every tensor made on the way and every tensor in the
    batch has at most B×S elements (no B×S×S mask on the CPU side)."""
    spy = LargestTensor()
    with spy:
        batch = collator([dict(f) for f in features])
    bsz, seq = batch["input_ids"].shape
    shapes = {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    wrong = {k: s for k, s in shapes.items() if s != (bsz, seq)}
    if wrong or spy.numel > bsz * seq:
        raise AssertionError(
            f"collated Phase A batch must hold only B×S={bsz}×{seq} tensors; got {wrong or shapes}, "
            f"largest tensor built while collating {spy.shape}"
        )
    return {
        "batch": [bsz, seq],
        "tensors": {k: list(s) for k, s in shapes.items()},
        "largest_tensor_built": list(spy.shape),
    }


def main(argv: list[str] | None = None) -> None:
    """Tokenise and collate both row sets with every variant; print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=192, help="short rows")
    parser.add_argument("--long-rows", type=int, default=24)
    parser.add_argument("--cot-repeat", type=int, default=14, help="CoT copies in a long row")
    parser.add_argument("--batch", type=int, default=8, help="rows per collated batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="dataprep", help="JSON name under build/bench/")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()  # one bar per map call would bury the table
    info = machine()
    cpu = torch.device("cpu")
    tokenizer = build_tokenizer()
    add_abstract_tokens(tokenizer)
    strats = strategies(tokenizer)
    rows, extra = [], {}
    for label, data in (("short", dolci_rows(args.rows)), ("long", dolci_rows(args.long_rows, args.cot_repeat))):
        outputs = {name: tokenize(s, data) for name, s in strats.items()}  # also the warm-up
        samples = interleaved(
            {name: (lambda s=s, data=data: tokenize(s, data)) for name, s in strats.items()},
            args.repeats,
            0,
            cpu,
            f"tokenise {label}",
        )
        for name, res in samples.items():
            lengths = [len(x) for x in outputs[name]["input_ids"]]
            speed = paired_ratio(samples["chat_template"], res)
            rows.append(
                dict(
                    step="tokenise",
                    rows_set=label,
                    variant=name,
                    rows=len(data),
                    mean_tokens=sum(lengths) / len(lengths),
                    median_s=res.median_s,
                    rows_s=len(data) / res.median_s,
                    tokens_s=sum(lengths) / res.median_s,
                    vs_axolotl=speed["median"],
                    vs_axolotl_text=speed["text"],
                    peak_mib=res.peak_mib,
                    samples=res.summary(),
                )
            )
        rows.append(_collate_row(label, outputs, tokenizer, args, cpu, extra))
    columns = [
        ("step", "step", ""),
        ("rows_set", "rows", ""),
        ("variant", "variant", ""),
        ("rows", "n", "d"),
        ("mean_tokens", "mean tokens/row", ".0f"),
        ("rows_s", "rows/s", ".0f"),
        ("tokens_s", "tokens/s", ".0f"),
        ("vs_axolotl_text", "speed vs axolotl [range]", ""),
        ("peak_mib", "peak MiB", ".0f"),
    ]
    notes = [
        f"medians of {args.repeats} interleaved repeats after one warm-up; sequence_len {SEQUENCE_LEN}; "
        "tokenise = axolotl TokenizedPromptDataset (datasets.map, batched, one process)",
        "speed vs axolotl = axolotl's time / this variant's time, median and range over repeats (tokenise: "
        "chat_template; collate: DataCollatorForSeq2Seq on the same Phase A rows without segment_ids)",
        "B×S×S check: "
        + "; ".join(
            f"{k}: batch {v['batch']}, tensors {v['tensors']}, largest tensor built "
            f"while collating {v['largest_tensor_built']}"
            for k, v in extra.items()
        ),
    ]
    report(
        args.out,
        "Data preparation: rows/s of our strategies vs axolotl chat_template",
        info,
        rows,
        columns,
        notes,
        extra={"bxsxs_check": extra, "args": vars(args)},
    )


def _collate_row(label, outputs, tokenizer, args, cpu, extra) -> dict:
    """Collation of Phase A rows: SegmentCollator vs axolotl's own collator; the B×S×S check."""
    from axolotl.utils.collators import DataCollatorForSeq2Seq

    from abscot_plugin.train.collator import SegmentCollator

    keep = ("input_ids", "attention_mask", "labels", "segment_ids")
    phase_a = [{k: r[k] for k in keep} for r in outputs["phase_a"]]
    plain = [{k: r[k] for k in keep[:3]} for r in phase_a]
    ours = SegmentCollator(tokenizer=tokenizer, padding=True, return_tensors="pt")
    theirs = DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True, return_tensors="pt")
    extra[label] = check_no_bxsxs(ours, phase_a[: args.batch])

    def run(collator, feats):
        for i in range(0, len(feats), args.batch):
            collator([dict(f) for f in feats[i : i + args.batch]])

    samples = interleaved(
        {"segment_collator": lambda: run(ours, phase_a), "axolotl_collator": lambda: run(theirs, plain)},
        args.repeats,
        1,
        cpu,
        f"collate {label}",
    )
    res, base = samples["segment_collator"], samples["axolotl_collator"]
    speed = paired_ratio(base, res)
    return dict(
        step="collate",
        rows_set=label,
        variant="phase_a SegmentCollator",
        rows=len(phase_a),
        mean_tokens=sum(len(r["input_ids"]) for r in phase_a) / len(phase_a),
        median_s=res.median_s,
        rows_s=len(phase_a) / res.median_s,
        vs_axolotl=speed["median"],
        vs_axolotl_text=speed["text"],
        peak_mib=res.peak_mib,
        samples={"segment_collator": res.summary(), "axolotl_collator": base.summary()},
    )


if __name__ == "__main__":
    main()
