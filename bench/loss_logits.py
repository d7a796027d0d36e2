"""Loss-only logits against full logits: one Phase A train step (forward + backward) of a model of
Qwen3-4B's width at Qwen3's real vocabulary (151,936 rows, tied), peak memory and time, in one run.

    python bench/loss_logits.py                    # CPU: width 2560, 1 layer, seq 4096, full + LoRA
    python bench/loss_logits.py --layers 36 --seq 8192   # on a GPU: Qwen3-4B itself (bf16, flex)

"full logits" is the model's forward with ``labels`` (fp32 logits at every position, what the
trainer did before); "loss-only" adds ``loss_only_inputs`` (``logits_to_keep`` + ``shift_labels``,
what ``AbsCoTTrainer`` now passes), so the lm_head projects only the positions the loss reads. Both
take the same Phase A batch (``segment_ids`` of ``mask_step.phase_a_segments``: labels on the
abstract and answer segments) with the bottleneck mask (SDPA on CPU, where FlexAttention has no
backward; flex on CUDA). The step's loss is checked to agree between the two. Train modes: full
(every weight trains) and LoRA (r 32 on every projection, trainable V_abs rows through peft's
trainable tokens, tied lm_head), as the Qwen3-4B configs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abscot_plugin.testing.fixtures import QWEN3_4B  # noqa: E402
from abscot_plugin.tokens import segments as seg  # noqa: E402
from abscot_plugin.tokens.segments import bottleneck_attention_mask  # noqa: E402
from abscot_plugin.tokens.sequences import IGNORE  # noqa: E402
from abscot_plugin.train.loss_logits import loss_only_inputs  # noqa: E402
from bench.common import interleaved, machine, paired_ratio, ratio, report  # noqa: E402
from bench.mask_step import LORA, phase_a_segments  # noqa: E402

NEW_ROWS = list(range(151669, 151669 + 66))  # where V_abs lands in Qwen3's vocabulary
VARIANTS = ("full logits", "loss-only")


def build_model(layers: int, attn: str, train: str, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    """Random Qwen3 of Qwen3-4B's shape with ``layers`` layers; LoRA + trainable V_abs rows for
    ``lora``; gradient checkpointing (non-reentrant, as the Qwen3-4B configs) with ``checkpointing``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**{**QWEN3_4B, "num_hidden_layers": layers})
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(**LORA, trainable_token_indices={"embed_tokens": NEW_ROWS}))
    return model.train()


def phase_a_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """ids, Phase A ``segment_ids`` and labels on the abstract and answer segments."""
    segments = phase_a_segments(batch, seq, device)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seq)).to(device)
    labelled = (segments == seg.ABSTRACT) | (segments == seg.ANSWER)
    return {"input_ids": ids, "segment_ids": segments, "labels": ids.masked_fill(~labelled, IGNORE)}


def bench_one(train: str, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Full logits vs loss-only for one train mode: times, peak memory, the loss of each."""
    attn = "flex_attention" if device.type == "cuda" else "sdpa"
    model = build_model(args.layers, attn, train, device, dtype, args.gradient_checkpointing)
    base = model.get_base_model() if train == "lora" else model
    data = phase_a_batch(args.batch, args.seq, QWEN3_4B["vocab_size"], device)
    losses: dict[str, float] = {}

    def step(variant: str):
        def run() -> None:
            mask = bottleneck_attention_mask(base.config, data["segment_ids"], dtype)
            extra = loss_only_inputs(data["labels"]) if variant == "loss-only" else {}
            out = model(
                input_ids=data["input_ids"], attention_mask=mask, labels=data["labels"], use_cache=False, **extra
            )
            out.loss.backward()
            losses[variant] = out.loss.item()
            model.zero_grad(set_to_none=True)

        return run

    steps = interleaved({v: step(v) for v in VARIANTS}, args.repeats, args.warmup, device, f"{train} S={args.seq}")
    full, only = (steps[v] for v in VARIANTS)
    time_ratio = paired_ratio(only, full)
    labelled = int(loss_only_inputs(data["labels"])["logits_to_keep"].numel())
    row = dict(
        train=train,
        layers=args.layers,
        seq=args.seq,
        batch=args.batch,
        labelled=labelled,
        full_s=full.median_s,
        only_s=only.median_s,
        ratio=time_ratio["median"],
        ratio_text=time_ratio["text"],
        full_mib=full.peak_mib,
        only_mib=only.peak_mib,
        mem_ratio=ratio(only.peak_mib, full.peak_mib),
        saved_mib=None if full.peak_mib is None else full.peak_mib - only.peak_mib,
        loss_diff=abs(losses["loss-only"] - losses["full logits"]),
        samples={k: v.summary() for k, v in steps.items()},
    )
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--layers", type=int, default=36 if cuda else 1)
    parser.add_argument("--seq", type=int, default=8192 if cuda else 4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train", default="full,lora", help="full and/or lora")
    parser.add_argument("--repeats", type=int, default=5 if cuda else 3)
    parser.add_argument("--warmup", type=int, default=2 if cuda else 1)
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    parser.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=cuda,
        help="as the Qwen3-4B configs (default on CUDA)",
    )
    parser.add_argument("--out", default="loss_logits", help="JSON name under build/bench/")
    args = parser.parse_args(argv)
    args.train = args.train.split(",")
    if set(args.train) - {"full", "lora"}:
        parser.error(f"--train takes full and/or lora, got {args.train}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Each train mode's comparison; print and write the figures."""
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    info = machine()
    rows = []
    for train in args.train:
        rows.append(bench_one(train, args, device, dtype))
        print(
            f"{train}: time ratio {rows[-1]['ratio_text']}, memory ratio {rows[-1]['mem_ratio']}",
            file=sys.stderr,
            flush=True,
        )
    columns = [
        ("train", "train", ""),
        ("layers", "layers", ""),
        ("seq", "seq", ""),
        ("labelled", "positions kept", ""),
        ("full_s", "full logits s/step", ".2f"),
        ("only_s", "loss-only s/step", ".2f"),
        ("ratio_text", "time loss-only/full [range]", ""),
        ("full_mib", "full logits peak MiB", ".0f"),
        ("only_mib", "loss-only peak MiB", ".0f"),
        ("mem_ratio", "memory ratio", ".2f"),
        ("saved_mib", "MiB saved", ".0f"),
        ("loss_diff", "|Δ loss|", ".1e"),
    ]
    notes = [
        f"Qwen3-4B width (hidden 2560, MLP 9728, 32/8 heads, d_head 128), vocabulary {QWEN3_4B['vocab_size']} "
        f"tied, {args.layers} layer(s), batch {args.batch}, {args.dtype}, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; Phase A batch with the bottleneck mask",
        f"medians of {args.repeats} interleaved repeats after {args.warmup} warm-up; time ratio: median and range "
        "of the per-repeat ratios; peak MiB from one more untimed step of each (gradients included)",
    ]
    report(
        args.out,
        "Loss-only logits vs full logits: Phase A train step at the real vocabulary",
        info,
        rows,
        columns,
        notes,
        extra={"args": dict(vars(args))},
    )


if __name__ == "__main__":
    main()
