"""RL rollout rate (prompts/s, tokens/s): ``abscot_plugin.rl.rollout.rollout`` (the sampled two-stage
decode GRPO trains on) with the HF backend and, where ``.venv-vllm`` exists, the vLLM backend and
the rollout server, on the same model and the same prompts, interleaved in one process.

    python bench/rollout.py [--model DIR] [--backends hf,vllm,server] [--problems 6] [--k 4] [--answer-tokens 64]

The ``server`` backend is ``python -m abscot_plugin.rl.rollout_server`` in its own process, reached
over HTTP by ``rollout_client.RemoteDecoder``; each of its calls first pushes the HF model's weights
to it (``WeightPush``, as a GRPO step does), so its time is sync + rollouts.

Each call decodes ``--problems`` MATH problems × K rollouts (trace at m_min 16..m_max 128, then the
answer, both at temperature 1.0, as axolotl_configs/tiny_grpo.yml samples), on problems no other
call has seen ("Case k." openings, so vLLM's prefix cache cannot replay earlier work). Both engines
are built as the trace-generation CLI builds them (vLLM with ``logprobs_mode="processed_logprobs"``,
eager, float32); the notes give the largest gap between its sampled
log-probabilities and the trainer's (``rollout.completion_log_probs`` of the HF model) over the
last call's loss positions. Like ``bench/tracegen.py``, the script re-runs itself under
``.venv-vllm`` so that both backends run in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.tracegen import tiny_model, vllm_env_backends  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder whose tokenizer has V_abs (default: tiny)")
    parser.add_argument(
        "--backends", default="hf,vllm,server", help="vllm and server are dropped when .venv-vllm is missing"
    )
    parser.add_argument("--problems", type=int, default=6, help="problems per timed call")
    parser.add_argument("--k", type=int, default=4, help="rollouts per problem")
    parser.add_argument("--answer-tokens", type=int, default=64, help="answer budget")
    parser.add_argument("--batch-size", type=int, default=8, help="hf backend: sequences per generate call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="rollout", help="JSON name under build/bench/")
    parser.add_argument("--in-vllm-env", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    if bad := [b for b in args.backends if b not in ("hf", "vllm", "server")]:
        parser.error(f"unknown backend(s) {bad}: hf, vllm, server")
    return args


def problem_sets(count: int, calls: int) -> list[list[str]]:
    """``calls`` disjoint sets of ``count`` MATH problems from the shipped tiny file."""
    import json

    from abscot_plugin.testing.fixtures import data_path

    base = [json.loads(line)["problem"] for line in data_path("math500_tiny.jsonl").read_text().splitlines()]
    return [[f"Case {c * count + i}. {base[(c * count + i) % len(base)]}" for i in range(count)] for c in range(calls)]


def decoders(backends: list[str], model: Path, setup, batch_size: int, stack: contextlib.ExitStack) -> dict:
    """The backends, each built by the generation CLI's own loader (``bench/tracegen.py``'s
    ``load``); HF always (it also scores vLLM's log-probabilities); ``server``: a rollout server
    started for the length of ``stack`` (float32, as the others)."""
    from abscot_plugin.rl.rollout_client import RemoteDecoder, started_server
    from bench.tracegen import VLLM_PYTHON, load

    opts = argparse.Namespace(batch_size=batch_size, max_model_len=1024, dtype="float32", enforce_eager=True)
    decs = {b: load(b, model, opts)[0] for b in ["hf"] + [b for b in backends if b == "vllm"]}
    if "server" in backends:
        log = REPO / "build" / "bench" / "rollout_server.log"
        args = ["--dtype", "float32", "--max-model-len", "1024"]
        decs["server"] = RemoteDecoder(stack.enter_context(started_server(VLLM_PYTHON, model, args, log)))
    return decs


def logprob_gap(out: dict, hf_model, setup) -> float:
    """Largest |sampled log-prob - trainer log-prob| over the loss positions of ``out``."""
    import torch

    from abscot_plugin.rl.rollout import completion_log_probs

    worst = 0.0
    for prompt, completion, logps, mask in zip(
        out["prompt_ids"], out["completion_ids"], out["logprobs"], out["env_mask"], strict=True
    ):
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt + completion])).logits[:, len(prompt) - 1 : -1]
            ours = completion_log_probs(logits, torch.tensor([completion]), setup)[0]
        for pos, on in enumerate(mask):
            if on:
                worst = max(worst, abs(float(ours[pos]) - logps[pos]))
    return worst


def run(args, notes: list[str]) -> None:
    import torch
    from transformers import AutoTokenizer

    from abscot_plugin.rl.rollout import RLSetup, rollout
    from abscot_plugin.rl.rollout_client import WeightPush
    from bench.common import interleaved, machine, paired_ratio, report

    info = machine()
    model = Path(args.model) if args.model else tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    setup = RLSetup.build(
        tokenizer,
        64,
        m_min=16,
        m_max=128,
        temperature=1.0,
        max_completion_length=128 + 2 + args.answer_tokens,
        seed=0,
        batch_size=args.batch_size,
    )
    stack = contextlib.ExitStack()
    decs = decoders(args.backends, model, setup, args.batch_size, stack)
    pushes = {"server": WeightPush(decs["server"].url)} if "server" in decs else {}
    sets = problem_sets(args.problems, args.repeats + 1)
    done: dict[str, list[dict]] = {}

    def variant(backend: str):
        calls = done.setdefault(backend, [])

        def call() -> None:
            if backend in pushes:  # a GRPO step's sync before its rollouts
                pushes[backend].push(decs["hf"].model)
            problems = [p for p in sets[len(calls)] for _ in range(args.k)]  # call 0 is the warm-up
            out = rollout(decs[backend], tokenizer, setup, problems, tag=[len(calls)])
            calls.append(
                {
                    "rollouts": len(problems),
                    "out": out,
                    "trace_tokens": sum(t + 1 for t in out["abscot_trace_tokens"]),
                    "tokens": sum(map(len, out["completion_ids"])),
                }
            )

        return call

    backends = [b for b in args.backends if b in decs]
    with stack:
        samples = interleaved(
            {b: variant(b) for b in backends}, args.repeats, 1, torch.device("cpu"), "rollouts", memory=False
        )
    rows = []
    for backend in backends:
        res, calls = samples[backend], done[backend][1:]
        secs = sum(res.seconds)
        speed = paired_ratio(samples["hf"], res) if "hf" in samples else None
        rows.append(
            dict(
                backend=backend,
                rollouts=calls[0]["rollouts"],
                median_s=res.median_s,
                prompts_s=args.problems / res.median_s,
                rollouts_s=calls[0]["rollouts"] / res.median_s,
                tokens_s=sum(c["tokens"] for c in calls) / secs,
                mean_trace_tokens=sum(c["trace_tokens"] for c in calls) / sum(c["rollouts"] for c in calls),
                mean_completion_tokens=sum(c["tokens"] for c in calls) / sum(c["rollouts"] for c in calls),
                speedup_text=speed["text"] if speed else None,
                samples=res.summary(),
            )
        )
    for backend in [b for b in ("vllm", "server") if b in done]:
        gap = logprob_gap(done[backend][-1]["out"], decs["hf"].model, setup)
        notes.append(f"{backend}: sampled log-probs vs the trainer's, last call's loss positions: max gap {gap:.2e}")
    columns = [
        ("backend", "backend", ""),
        ("rollouts", "rollouts/call", "d"),
        ("median_s", "s/call", ".2f"),
        ("prompts_s", "prompts/s", ".2f"),
        ("rollouts_s", "rollouts/s", ".1f"),
        ("tokens_s", "tokens/s", ".0f"),
        ("mean_trace_tokens", "mean trace tokens", ".0f"),
        ("mean_completion_tokens", "mean completion tokens", ".0f"),
        ("speedup_text", "speed vs hf [range]", ""),
    ]
    notes = [
        f"medians of {args.repeats} interleaved calls after one warm-up, each on unseen problems; {args.problems} "
        f"problems × K={args.k}; m_min 16, m_max 128, answer budget {args.answer_tokens}, temperature 1.0; "
        f"float32; hf batch {args.batch_size}",
        "tokens: completion tokens (trace, <endabstract>, \\n, answer); a random model's answers run to the budget",
        *notes,
    ]
    report(
        args.out,
        "RL rollouts: prompts/s and tokens/s per backend",
        info,
        rows,
        columns,
        notes,
        extra={"args": vars(args)},
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    notes = vllm_env_backends(args, argv, __file__)
    from bench.tracegen import VLLM_PYTHON

    if "server" in args.backends and not VLLM_PYTHON.exists():
        args.backends.remove("server")
        notes.append("server skipped: no .venv-vllm (the rollout server runs there)")
    run(args, notes)


if __name__ == "__main__":  # the guard vLLM's spawned workers need
    main()
