"""Runs in the vLLM environment (.venv-vllm): one vLLM engine for the decode and generate tests
(starting vLLM on CPU takes about a minute, so both test files share this run).

    .venv-vllm/bin/python tests/vllm_worker.py MODEL_DIR REQUEST.json RESULT.json

REQUEST: {"prefixes": [[ids]], "settings": [{TraceSettings kwargs}, ...], "greedy_settings":
{...}, "answer_max_tokens": N, "generate": {"data", "out", "limit", "max_model_len", "m_min",
"m_max"}, "rollout": {"problems", "k", "m_min", "m_max", "max_completion_length"}}. The engine is
built by the generate CLI's own loader (``load_decoder``, through ``engines.build_llm``) from its
arguments; the Phase A generation is for a training of sequence_len = max_model_len (the CLI's
default) and m_max = the request's m_max. RESULT:
{"traces": [[[ids]] per settings], "greedy": [[ids]], "two_stage": [{"trace", "answer"}],
"generate_summary": "<the CLI's summary line>", "rollout": <abscot_plugin.rl.rollout.rollout's output
for each problem K times, temperature 1>} (a file: vLLM prints to stdout).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    from abscot_plugin.core.rows import read_rows
    from abscot_plugin.core.traces import TraceSettings
    from abscot_plugin.generation.decode import two_stage
    from abscot_plugin.generation.generate import load_decoder, parse_args, phase_a_layout
    from abscot_plugin.generation.runner import generate_traces
    from abscot_plugin.rl.rollout import RLSetup, rollout
    from abscot_plugin.tokens.sequences import SequenceBuilder

    model_dir, request_path, result_path = sys.argv[1:4]
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    gen = request["generate"]
    args = parse_args(
        [
            "--backend",
            "vllm",
            "--model",
            model_dir,
            "--data",
            gen["data"],
            "--mode",
            "phase_a",
            "--out",
            gen["out"],
            "--max-model-len",
            str(gen["max_model_len"]),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--m-min",
            str(gen["m_min"]),
            "--m-max",
            str(gen["m_max"]),
        ]
    )
    decoder, tokenizer, max_len = load_decoder(args)
    builder = SequenceBuilder(tokenizer, decoder.vocab)
    prefixes = request["prefixes"]
    greedy = TraceSettings(**request["greedy_settings"])
    outs = two_stage(decoder, prefixes, greedy, request["answer_max_tokens"], [builder.end_of_turn], builder)
    settings = TraceSettings(m_min=args.m_min, m_max=args.m_max)
    summary = generate_traces(
        decoder,
        builder,
        read_rows(gen["data"], gen["limit"]),
        "phase_a",
        gen["out"],
        settings,
        max_len,
        phase_a_layout(args, max_len),
        chunk_size=5,
    )
    result = {
        "traces": [decoder.traces(prefixes, TraceSettings(**kw)) for kw in request["settings"]],
        "greedy": decoder.traces(prefixes, greedy),
        "two_stage": [{"trace": o.trace, "answer": o.answer} for o in outs],
        "generate_summary": summary.line(),
    }
    rl = request["rollout"]
    setup = RLSetup.build(
        tokenizer,
        len(decoder.vocab.symbol_ids),
        rl["m_min"],
        rl["m_max"],
        1.0,
        rl["max_completion_length"],
        seed=0,
        batch_size=1,
    )
    problems = [p for p in rl["problems"] for _ in range(rl["k"])]
    result["rollout"] = rollout(decoder, tokenizer, setup, problems, tag=[1])
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


if __name__ == "__main__":  # vLLM's spawned workers re-import this file
    main()
