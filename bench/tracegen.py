"""Trace generation rate (prompts/s, tokens/s) for Phase B prefixes (x <beginabstract>, short) and
Phase A prefixes (x c <beginabstract>, long), with the HF backend and, where ``.venv-vllm`` exists,
the vLLM backend, on the same model and the same prompts, interleaved in one process.

    python bench/tracegen.py [--model DIR] [--prompts-b 24] [--prompts-a 3] [--cot-repeat 12]

Decoding is ``abscot_plugin.generation.decode`` (``Decoder.traces`` under the stage-1 constraint: m_min 16,
m_max 128, temperature 0.7), each backend built by ``abscot_plugin.generation.generate.load_decoder`` as the
trace-generation CLI builds it. vLLM cannot share the training venv, so when ``.venv-vllm/bin/python``
exists this script re-runs itself there and both backends run in that one process (its
transformers version is the one recorded). Every call gets prompts no other call has seen (unique
"Case k." openings), so vLLM's prefix cache cannot replay earlier work. Without ``--model`` the
tiny random Qwen3 with V_abs is built under ``build/bench/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
TINY_MODEL = REPO / "build" / "bench" / "tiny_abscot"
MODES = ("phase_b", "phase_a")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options (the hidden --in-vllm-env marks the re-run under .venv-vllm)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder whose tokenizer has V_abs (default: tiny)")
    parser.add_argument("--backends", default="hf,vllm", help="vllm is dropped when .venv-vllm is missing")
    parser.add_argument("--prompts-b", type=int, default=24, help="Phase B prompts per timed call")
    parser.add_argument("--prompts-a", type=int, default=3, help="Phase A prompts per timed call")
    parser.add_argument("--cot-repeat", type=int, default=12, help="CoT copies in a Phase A row (prefix length)")
    parser.add_argument("--batch-size", type=int, default=8, help="hf backend: prompts per generate call")
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=1400,
        help="engine length and Phase A training sequence_len (CoTs cut as training cuts them)",
    )
    parser.add_argument("--dtype", default=None, help="both backends (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="vllm without graphs/compilation (default: on without CUDA)",
    )
    parser.add_argument("--out", default="tracegen", help="JSON name under build/bench/")
    parser.add_argument("--in-vllm-env", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    if bad := [b for b in args.backends if b not in ("hf", "vllm")]:
        parser.error(f"unknown backend(s) {bad}: hf, vllm")
    return args


def vllm_env_backends(args: argparse.Namespace, argv: list[str], script: str) -> list[str]:
    """Where the backends run: with ``vllm`` wanted outside .venv-vllm, re-run ``script`` there
    (this process is replaced) or drop ``vllm`` when that venv is missing; returns the notes to
    record. Needs ``args.backends`` and ``args.in_vllm_env``."""
    notes: list[str] = []
    if "vllm" in args.backends and not args.in_vllm_env:
        if VLLM_PYTHON.exists():
            reexec_in_vllm_env(argv, script)
        args.backends.remove("vllm")
        notes.append("vllm skipped: no .venv-vllm (bash scripts/setup_vllm.sh creates it)")
    if args.in_vllm_env:
        sys.argv.remove("--in-vllm-env")  # the recorded command is the one the user typed
        notes.append(f"both backends ran under {VLLM_PYTHON.relative_to(REPO)} (vLLM cannot share the training venv)")
    return notes


def reexec_in_vllm_env(argv: list[str], script: str = __file__) -> None:
    """Replace this process by the same command (``script`` with ``argv``) under .venv-vllm's python."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries the table
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    os.execve(str(VLLM_PYTHON), [str(VLLM_PYTHON), script, *argv, "--in-vllm-env"], env)


def tiny_model() -> Path:
    """The tiny random Qwen3 with V_abs in its tokenizer (built once, moved into place whole)."""
    import shutil
    import tempfile

    from abscot_plugin.testing.fixtures import build_tiny

    if not (TINY_MODEL / "config.json").exists():
        TINY_MODEL.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny_abscot.", dir=TINY_MODEL.parent))
        build_tiny(tmp, extend=True)
        shutil.rmtree(TINY_MODEL, ignore_errors=True)
        os.replace(tmp, TINY_MODEL)
    return TINY_MODEL


def prefix_sets(builder, args, calls: int) -> dict[str, list[list[list[int]]]]:
    """``calls`` disjoint prompt sets per mode, made by the trace-generation CLI's own
    ``build_prefixes`` (Phase A: the prefixes of Phase A training rows of sequence_len
    ``--max-model-len`` and m_max 128, the CLI's defaults)."""
    from abscot_plugin.args import RowLayout
    from abscot_plugin.generation.prefixes import build_prefixes
    from bench.common import dolci_rows

    sizes = {"phase_b": args.prompts_b, "phase_a": args.prompts_a}
    layout = RowLayout(args.max_model_len, 128, "end")
    sets: dict[str, list] = {}
    first = 0  # rows (so prompts) are disjoint across modes too: no shared prefix to cache
    for mode in MODES:
        rows = dolci_rows(sizes[mode] * calls, args.cot_repeat if mode == "phase_a" else 1, first)
        first += len(rows)
        prefixes = build_prefixes(
            [(r["id"], r) for r in rows], builder, mode, layout.m_max, args.max_model_len, layout, False, {}
        )
        ids = [p.ids for p in prefixes]
        sets[mode] = [ids[i * sizes[mode] : (i + 1) * sizes[mode]] for i in range(calls)]
    return sets


def load(backend: str, model: Path, args):
    """(decoder, tokenizer, max_model_len) through the generation CLI's own loader."""
    from abscot_plugin.generation import generate

    cli = [
        "--model",
        str(model),
        "--data",
        "-",
        "--mode",
        "phase_b",
        "--out",
        "-",
        "--backend",
        backend,
        "--batch-size",
        str(args.batch_size),
        "--max-model-len",
        str(args.max_model_len),
        "--dtype",
        args.dtype,
    ]
    cli.append("--enforce-eager" if args.enforce_eager else "--no-enforce-eager")
    return generate.load_decoder(generate.parse_args(cli))


def run(args, notes: list[str]) -> None:
    """Time every backend × prefix kind interleaved; print and write the figures."""
    import torch
    from transformers import AutoTokenizer

    from abscot_plugin.core.traces import TraceSettings
    from abscot_plugin.tokens.sequences import SequenceBuilder
    from abscot_plugin.tokens.vocab import AbstractVocab
    from bench.common import interleaved, machine, paired_ratio, report

    cuda = torch.cuda.is_available()
    if args.enforce_eager is None:
        args.enforce_eager = not cuda
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    info = machine()
    model = Path(args.model) if args.model else tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    sets = prefix_sets(SequenceBuilder(tokenizer, AbstractVocab.from_tokenizer(tokenizer)), args, args.repeats + 1)
    decoders = {backend: load(backend, model, args)[0] for backend in args.backends}
    if "vllm" in decoders:
        import vllm

        info["vllm"] = vllm.__version__
    done: dict[tuple[str, str], list[dict]] = {}

    def variant(backend: str, mode: str):
        calls = done.setdefault((backend, mode), [])

        def call() -> None:
            prefixes = sets[mode][len(calls)]  # call 0 is the warm-up
            traces = decoders[backend].traces(prefixes, TraceSettings(seed=len(calls)))
            calls.append(
                {
                    "prompts": len(prefixes),
                    "prefix_tokens": sum(map(len, prefixes)),
                    "trace_tokens": sum(len(t) + 1 for t in traces),
                }
            )  # + <endabstract>

        return call

    keys = [(b, m) for m in MODES for b in decoders]
    samples = interleaved(
        {f"{b}/{m}": variant(b, m) for b, m in keys},
        args.repeats,
        1,
        torch.device("cuda" if cuda else "cpu"),
        "trace generation",
        memory=False,
    )
    rows = []
    for backend, mode in keys:
        res, calls = samples[f"{backend}/{mode}"], done[(backend, mode)][1:]
        secs = sum(res.seconds)
        speed = paired_ratio(samples[f"hf/{mode}"], res) if "hf" in decoders else None
        rows.append(
            dict(
                backend=backend,
                mode=mode,
                prompts=calls[0]["prompts"],
                mean_prefix_tokens=sum(c["prefix_tokens"] for c in calls) / sum(c["prompts"] for c in calls),
                mean_trace_tokens=sum(c["trace_tokens"] for c in calls) / sum(c["prompts"] for c in calls),
                median_s=res.median_s,
                prompts_s=calls[0]["prompts"] / res.median_s,
                trace_tokens_s=sum(c["trace_tokens"] for c in calls) / secs,
                prefix_tokens_s=sum(c["prefix_tokens"] for c in calls) / secs,
                speedup_vs_hf=speed["median"] if speed else None,
                speedup_text=speed["text"] if speed else None,
                samples=res.summary(),
            )
        )
    columns = [
        ("backend", "backend", ""),
        ("mode", "prefix", ""),
        ("prompts", "prompts/call", "d"),
        ("mean_prefix_tokens", "mean prefix tokens", ".0f"),
        ("mean_trace_tokens", "mean trace tokens", ".0f"),
        ("median_s", "s/call", ".2f"),
        ("prompts_s", "prompts/s", ".1f"),
        ("trace_tokens_s", "trace tokens/s", ".0f"),
        ("prefix_tokens_s", "prefix tokens/s", ".0f"),
        ("speedup_text", "speed vs hf [range]", ""),
    ]
    shown = model.resolve()
    shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
    notes = [
        f"model {shown}; medians of {args.repeats} interleaved calls after one warm-up, each on unseen prompts; "
        f"m_min 16, m_max 128, temperature 0.7; {args.dtype}; max_model_len {args.max_model_len}; "
        f"hf batch {args.batch_size}" + (f"; vllm enforce_eager={args.enforce_eager}" if "vllm" in decoders else ""),
        "tokens/s over all timed calls; trace tokens include <endabstract>; a random model's traces end "
        "after ~m_min + 65 symbols on average (END holds ~1/65 of the allowed mass per step)",
        "reference (docs/method.md, Qwen3-4B, vLLM TP=2 on 2×A100): 294 prompts/s Phase B (~150-token prefix), "
        "5.6/s Phase A (~5,500-token prefix)",
        *notes,
    ]
    report(
        args.out,
        "Trace generation: prompts/s and tokens/s per backend",
        info,
        rows,
        columns,
        notes,
        extra={"args": vars(args)},
    )


def main(argv: list[str] | None = None) -> None:
    """Re-run under .venv-vllm when vLLM is wanted and there, else run the HF backend alone."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    notes = vllm_env_backends(args, argv, __file__)
    if not args.backends:
        raise SystemExit("no backend left to run (vllm needs .venv-vllm)")
    sys.path.insert(0, str(REPO))
    run(args, notes)


if __name__ == "__main__":  # the guard vLLM's spawned workers need
    main()
