"""Phase A train step (forward + backward) with the bottleneck mask against plain causal attention
at the same shapes, for each mask path (FlexAttention BlockMask, SDPA bool, eager additive).

    python bench/mask_step.py                 # CPU set: tiny and medium random Qwen3
    python bench/mask_step.py --models qwen3-4b --seqs 8192 --train full,lora   # on a GPU

"bottleneck" builds the mask from Phase A ``segment_ids`` ([prompt | cot | abstract | answer])
with ``bottleneck_attention_mask`` inside the timed step, as the trainer does once per step;
"plain" passes the 2-D all-ones mask of an unpadded batch and lets transformers build its causal
mask (what Phase B trains with). Both run the same random model on the same ids; the figure to
read is the ratio bottleneck/plain per path and length. A third variant, "our causal", runs our
mask code on all-prompt segments (a plain causal pattern): bottleneck/our causal is the cost of
the pattern, our causal/plain the cost of the mechanism. The three are timed interleaved, and
ratios are medians of per-repeat ratios. Where CUDA is present the set adds the Qwen3-4B shape
(bf16, seq 8192, full and LoRA) with tokens/s and model FLOPs utilisation: Phase A is the flex
row's "bottleneck" figure, Phase B (plain causal) the "plain" figures.

FLOPs counted (MFU): N = weights of every matmul (each ``nn.Linear`` incl. the tied ``lm_head``;
the embedding lookup is free; LoRA adapters counted apart as N_lora). Full fine-tuning:
6·N per token. LoRA: 4·N + 6·N_lora per token (forward 2·N, input gradients 2·N, no weight
gradients for frozen weights). Forward only (CPU flex rows): 2·(N + N_lora). Attention score
FLOPs are not in N; the "+attn" column adds 6·L·S·H·d_head per token (causal half of QKᵀ and
AV, forward + backward).

FlexAttention has no backward on CPU (torch raises NotImplementedError), so on CPU the flex rows
time the forward only (mode "fwd"), and its first call per shape compiles (excluded by warm-up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abscot_plugin.testing.fixtures import qwen3_4b_config, tiny_config  # noqa: E402
from abscot_plugin.tokens import segments as seg  # noqa: E402
from abscot_plugin.tokens.segments import bottleneck_attention_mask  # noqa: E402
from bench.common import interleaved, machine, paired_ratio, ratio, report, synchronize  # noqa: E402

PATHS = ("flex_attention", "sdpa", "eager")
SHORT = {"flex_attention": "flex", "sdpa": "sdpa", "eager": "eager"}
# plain: 2-D ones, transformers' causal mask; causal: our mask code on all-prompt segments (the
# causal pattern through the bottleneck machinery); bottleneck: our mask on Phase A segments
VARIANTS = ("plain", "causal", "bottleneck")
VOCAB_ROWS = 896  # the tiny fixture's embedding rows
LORA = dict(
    r=32,
    lora_alpha=64,
    lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
# default sequence lengths per model: (CPU, GPU)
DEFAULT_SEQS = {
    "tiny": ([512, 2048], [2048, 8192]),
    "medium": ([1024], [2048, 8192]),
    "qwen3-4b": ([], [8192]),
}
# dense bf16 peak by device name (datasheets); override with --peak-tflops
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def model_config(name: str):
    """The random models: the tiny fixture, a medium one, and Qwen3-4B's shape."""
    if name == "tiny":
        return tiny_config(VOCAB_ROWS, layers=2)
    if name == "medium":
        config = tiny_config(VOCAB_ROWS, layers=4)
        config.update(dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2))
        return config
    if name == "qwen3-4b":
        return qwen3_4b_config()
    raise ValueError(f"unknown model {name!r} (tiny, medium, qwen3-4b)")


def phase_a_segments(batch: int, seq: int, device: torch.device) -> torch.Tensor:
    """Phase A ``segment_ids``: prompt S/16, abstract min(130, S/16), answer S/16, CoT the rest."""
    prompt = answer = max(8, seq // 16)
    abstract = min(130, max(3, seq // 16))
    cot = seq - prompt - abstract - answer
    if cot < 1:
        raise ValueError(f"sequence length {seq} is too short for a Phase A layout")
    row = [seg.PROMPT] * prompt + [seg.COT] * cot + [seg.ABSTRACT] * abstract + [seg.ANSWER] * answer
    return torch.tensor([row] * batch, dtype=torch.int8, device=device)


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(N, N_lora): weights of every ``nn.Linear`` outside LoRA adapters, and those inside."""
    base = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if ".lora_" in name:
                lora += module.weight.numel()
            else:
                base += module.weight.numel()
    return base, lora


def flops_per_token(model, config, seq: int, train: str, backward: bool) -> tuple[float, float]:
    """(model FLOPs per token as documented above, attention FLOPs per token)."""
    n, n_lora = matmul_params(model)
    if not backward:
        dense = 2.0 * (n + n_lora)
    elif train == "full":
        dense = 6.0 * n
    else:
        dense = 4.0 * n + 6.0 * n_lora
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn = (3.0 if backward else 1.0) * 2.0 * config.num_hidden_layers * seq * config.num_attention_heads * head_dim
    return dense, attn


def eager_too_big(config, batch: int, seq: int, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the eager path cannot hold its saved attention probabilities here, or None."""
    need = config.num_hidden_layers * batch * config.num_attention_heads * seq * seq * 2 * dtype.itemsize
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemAvailable:")
        )
    if need > 0.8 * have:
        return f"eager needs ~{need / 2**30:.0f} GiB of attention scores (> 80% of {have / 2**30:.0f} GiB)"
    return None


def make_step(model, ids: torch.Tensor, mask_fn, backward: bool):
    """One train step (forward + loss + backward, grads dropped) or, without backward, a forward."""

    def step() -> None:
        mask = mask_fn()
        if backward:
            out = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)
            out.loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False)

    return step


def plain_mask_fn(config, batch: int, seq: int, dtype: torch.dtype, device: torch.device):
    """What the plain step passes (2-D ones) and a builder of the mask transformers makes from it."""
    from transformers.masking_utils import create_causal_mask

    ones = torch.ones(batch, seq, dtype=torch.long, device=device)
    embeds = torch.empty(batch, seq, 1, dtype=dtype, device=device)
    positions = torch.arange(seq, device=device)[None]

    def build():
        return create_causal_mask(
            config=config, inputs_embeds=embeds, attention_mask=ones, past_key_values=None, position_ids=positions
        )

    return (lambda: ones), build


def bench_one(model, config, name: str, train: str, path: str, seq: int, args, device, dtype) -> dict:
    """Time plain vs our causal vs bottleneck (and the mask builds) for one model/path/length."""
    backward = not (path == "flex_attention" and device.type == "cpu")
    row = dict(
        model=name, train=train, path=SHORT[path], seq=seq, batch=args.batch, mode="fwd+bwd" if backward else "fwd"
    )
    if path == "eager" and (why := eager_too_big(config, args.batch, seq, dtype, device)):
        return {**row, "note": why}
    segments = phase_a_segments(args.batch, seq, device)
    all_prompt = torch.full_like(segments, seg.PROMPT)  # our mask code, plain causal pattern
    generator = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, min(config.vocab_size, 700), (args.batch, seq), generator=generator).to(device)
    plain_input, plain_build = plain_mask_fn(config, args.batch, seq, dtype, device)
    builds = {
        "plain": plain_build,
        "causal": lambda: bottleneck_attention_mask(config, all_prompt, dtype),
        "bottleneck": lambda: bottleneck_attention_mask(config, segments, dtype),
    }
    inputs = {"plain": plain_input, "causal": builds["causal"], "bottleneck": builds["bottleneck"]}
    desc = f"{name} {train} {SHORT[path]} S={seq}"
    start = time.perf_counter()
    try:
        steps = interleaved(
            {k: make_step(model, ids, fn, backward) for k, fn in inputs.items()},
            args.repeats,
            args.warmup,
            device,
            desc,
        )
        masks = interleaved(builds, args.repeats, 1, device, desc + " masks", memory=False)
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        return {**row, "note": f"out of memory: {str(exc).splitlines()[0][:120]}"}
    tokens = args.batch * seq
    dense, attn = flops_per_token(model, config, seq, train, backward)
    row.update(flops_per_token=dense, attn_flops_per_token=attn)
    for variant in VARIANTS:
        secs = steps[variant].median_s
        row.update(
            {
                f"{variant}_s": secs,
                f"{variant}_mib": steps[variant].peak_mib,
                f"{variant}_mask_ms": 1e3 * masks[variant].median_s,
                f"{variant}_tok_s": tokens / secs,
            }
        )
        if args.peak_tflops:
            row[f"{variant}_mfu"] = dense * tokens / secs / (args.peak_tflops * 1e12)
            row[f"{variant}_mfu_attn"] = (dense + attn) * tokens / secs / (args.peak_tflops * 1e12)
    vs_plain = paired_ratio(steps["bottleneck"], steps["plain"])
    vs_causal = paired_ratio(steps["bottleneck"], steps["causal"])
    row.update(
        wall_s=time.perf_counter() - start,  # the whole comparison: warm-up (compilation) included
        recompiled_while_timed=steps["plain"].graphs_compiled_while_timed,
        ratio=vs_plain["median"],
        ratio_range=[vs_plain["min"], vs_plain["max"]],
        ratio_text=vs_plain["text"],
        ratio_causal=vs_causal["median"],
        ratio_causal_text=vs_causal["text"],
        mem_ratio=ratio(row["bottleneck_mib"], row["plain_mib"]),
        samples={
            f"{kind}_{k}": v.summary() for kind, res in (("step", steps), ("mask", masks)) for k, v in res.items()
        },
    )
    return row


def build_model(config, path: str, device: torch.device, dtype: torch.dtype):
    """A random Qwen3ForCausalLM of ``config``, initialised on ``device`` in ``dtype``."""
    from transformers import Qwen3ForCausalLM

    config._attn_implementation = path
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.to(dtype).train()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; the defaults depend on whether CUDA is present (CPU set or GPU set)."""
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", default="tiny,medium,qwen3-4b" if cuda else "tiny,medium")
    parser.add_argument("--seqs", default=None, help="comma-separated lengths (default: per model and device)")
    parser.add_argument("--paths", default="flex,sdpa,eager")
    parser.add_argument("--train", default="full,lora" if cuda else "full", help="full and/or lora")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5 if cuda else 3)
    parser.add_argument("--warmup", type=int, default=2 if cuda else 1)
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense peak of the device for MFU (default: known GPUs' bf16 datasheet figure)",
    )
    parser.add_argument("--out", default="mask_step", help="JSON name under build/bench/")
    args = parser.parse_args(argv)
    long_names = {v: k for k, v in SHORT.items()}
    args.paths = [long_names.get(p, p) for p in args.paths.split(",")]
    args.models = args.models.split(",")
    args.train = args.train.split(",")
    bad = [p for p in args.paths if p not in PATHS] + [t for t in args.train if t not in ("full", "lora")]
    if bad:
        parser.error(f"unknown path/train mode {bad}: paths are flex,sdpa,eager; train is full,lora")
    if args.peak_tflops is None and args.device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(args.device))
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every model × train mode × mask path × length; print and write the figures."""
    args = parse_args(argv)
    # every model × length × head layout is a flex shape; past the default 8 recompiles dynamo
    # would silently run flex_attention uncompiled (dense scores) and the figures would lie
    torch._dynamo.config.recompile_limit = 64
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    info = machine()
    rows = []
    for name in args.models:
        config = model_config(name)
        seqs = [int(s) for s in args.seqs.split(",")] if args.seqs else DEFAULT_SEQS[name][device.type == "cuda"]
        if not seqs:
            print(f"skipping {name}: no default lengths on {device.type} (pass --seqs)", file=sys.stderr)
            continue
        model = build_model(config, args.paths[0], device, dtype)
        for train in sorted(args.train):  # "full" before "lora": LoRA wraps the same model in place
            if train == "lora":
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(**LORA))
            for path in args.paths:
                base = model.get_base_model() if train == "lora" else model
                base.set_attn_implementation(path)
                for seq in seqs:
                    row = bench_one(model, base.config, name, train, path, seq, args, device, dtype)
                    rows.append(row)
                    print(
                        f"{name} {train} {row['path']} S={seq}: ratio {row.get('ratio')}, "
                        f"{row.get('wall_s', 0):.1f} s with warm-up",
                        file=sys.stderr,
                        flush=True,
                    )
        del model
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_report(args, info, rows, device)


def print_report(args, info: dict, rows: list[dict], device: torch.device) -> None:
    """The table, its notes and the JSON."""
    columns = [
        ("model", "model", ""),
        ("train", "train", ""),
        ("path", "mask path", ""),
        ("seq", "seq", ""),
        ("mode", "mode", ""),
        ("plain_s", "plain s/step", ".3f"),
        ("causal_s", "our causal s/step", ".3f"),
        ("bottleneck_s", "bottleneck s/step", ".3f"),
        ("ratio_text", "bottleneck/plain [range]", ""),
        ("ratio_causal_text", "bottleneck/our causal [range]", ""),
        ("plain_mask_ms", "plain mask ms", ".1f"),
        ("bottleneck_mask_ms", "bottleneck mask ms", ".1f"),
        ("plain_mib", "plain peak MiB", ".0f"),
        ("bottleneck_mib", "bottleneck peak MiB", ".0f"),
        ("mem_ratio", "mem ratio", ".2f"),
        ("plain_tok_s", "plain tok/s", ".0f"),
        ("bottleneck_tok_s", "bottleneck tok/s", ".0f"),
    ]
    if args.peak_tflops:
        columns += [
            ("plain_mfu", "plain MFU", ".1%"),
            ("bottleneck_mfu", "bottleneck MFU", ".1%"),
            ("bottleneck_mfu_attn", "bottleneck MFU +attn", ".1%"),
        ]
    columns.append(("note", "note", ""))
    recompiled = [f"{r['model']} {r['path']} S={r['seq']}" for r in rows if r.get("recompiled_while_timed")]
    notes = [
        "torch.compile graphs made during timed calls: " + (", ".join(recompiled) if recompiled else "none"),
        f"medians of {args.repeats} interleaved repeats after {args.warmup} warm-up; ratios: median and range "
        f"of the per-repeat ratios; batch {args.batch}; {args.dtype}; the mask is built inside the timed "
        "step (mask ms columns: the build alone); peak MiB from one more untimed step",
        "plain = 2-D ones mask, transformers builds the causal mask (flex: compiled create_block_mask; "
        "sdpa: none, is_causal kernel; eager: additive 4-D); our causal = bottleneck_attention_mask on "
        "all-prompt segments: bottleneck/our causal is the cost of the pattern, our causal/plain that "
        "of the mechanism",
    ]
    if device.type == "cpu" and "flex_attention" in args.paths:
        notes.append("flex on CPU: forward only (FlexAttention has no CPU backward in this torch)")
    if args.peak_tflops:
        notes.append(
            f"MFU against {args.peak_tflops:.0f} TFLOP/s; full 6·N, LoRA 4·N + 6·N_lora per token; "
            "+attn adds 6·L·S·H·d_head per token"
        )
    report(
        args.out,
        "Bottleneck mask vs plain causal: Phase A train step",
        info,
        rows,
        columns,
        notes,
        extra={"args": dict(vars(args))},
    )


if __name__ == "__main__":
    main()
