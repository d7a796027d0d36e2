"""Teacher trace generation for policy iteration, the command line: one trace per data row, under
the stage-1 constraint (:mod:`abscot_plugin.generation.decode`), written as the JSONL that
``abscot_trace_file`` reads.

    python -m abscot_plugin.generation.generate --model DIR --data ROWS.jsonl --mode phase_a|phase_b \\
        --out traces.jsonl --backend hf|vllm [--max-model-len N] [--m-min N --m-max N \\
        --temperature T --seed S] [--sequence-len S --cot-keep end] \\
        [--tensor-parallel-size N] [--data-parallel-size D [--num-nodes K --node-rank R]] [--limit N]

(``--help`` shows the defaults: the stage-1 settings are :class:`~abscot_plugin.core.traces.TraceSettings`'s.)

Phase A prefixes (:mod:`.prefixes`) are those of the rows the next Phase A training builds, whose
:class:`~abscot_plugin.args.RowLayout` is ``(--sequence-len, --m-max, --cot-keep)``: that
training's ``sequence_len``, ``abscot_m_max`` and ``abscot_cot_keep`` (the traces decoded are at
most ``--m-max`` symbols, the room its rows reserve). ``--sequence-len`` defaults to the engine's
length. Phase B prefixes are never cut. Bad rows fail the run, naming the row, or with
``--skip-bad-rows`` are skipped and counted by kind.

Output: a trace file (format and writer: :mod:`abscot_plugin.core.traces`), one record per row in
input order (``cot_cut``: CoT tokens cut from the prefix; 0 in Phase B), written chunk by chunk and
resumable (:mod:`.runner`); ``OUT.meta.json`` records the settings (the Phase A layout as
``train_layout``) and counts.

Data parallel (vLLM's offline multi-process pattern; docs/scale.md): ``--data-parallel-size D``
starts D worker processes, each with its own engine on its own ``--tensor-parallel-size`` GPUs and
its own chunks (:func:`~.runner.owned_chunks`); this process checks every row first and merges at
the end. ``--num-nodes K --node-rank R`` runs the same command on K machines sharing the output
folder; node 0 merges. The traces do not depend on D or K. Engines and models are loaded by
:mod:`.engines`. Runs under the vLLM environment too: nothing here imports axolotl.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import get_args

from ..args import RowLayout
from ..core.choices import (
    DEFAULT_BACKEND,
    DEFAULT_COT_KEEP,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_HF_BATCH_SIZE,
    Backend,
    CotKeep,
    Phase,
)
from ..core.rows import DEFAULT_ID_FIELD, iter_rows
from ..core.symbols import DEFAULT_NUM_SYMBOLS
from ..core.traces import TraceSettings, TraceWriter
from ..tokens.sequences import SequenceBuilder
from ..tokens.vocab import AbstractVocab
from .engines import build_llm, load_hf
from .runner import Summary, finished_summary, generate_rank, merge_traces, owned_chunks, wait_for_chunks


def engine_length(args: argparse.Namespace) -> int | None:
    """The engine's context: ``--max-model-len``, else the model's ``max_position_embeddings``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model)
    return args.max_model_len or getattr(config.get_text_config(), "max_position_embeddings", None)


def load_decoder(args: argparse.Namespace):
    """(decoder, tokenizer, max_model_len) for ``args.backend``; the model is loaded once
    (:func:`~.engines.build_llm` or :func:`~.engines.load_hf`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    try:
        vocab = AbstractVocab.from_tokenizer(tokenizer, args.num_symbols)
    except ValueError as exc:
        raise SystemExit(f"{args.model}: {exc}") from None
    max_len = engine_length(args)
    if args.backend == "vllm":
        from .vllm_decoder import VLLMDecoder

        llm = build_llm(
            args.model,
            dtype=args.dtype,
            max_model_len=max_len,
            tensor_parallel_size=args.tensor_parallel_size,
            seed=args.seed,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enforce_eager=args.enforce_eager,
        )
        return VLLMDecoder(llm, vocab), tokenizer, max_len
    from .hf_decoder import HFDecoder

    model = load_hf(args.model, args.dtype)
    return HFDecoder(model, tokenizer, vocab, batch_size=args.batch_size), tokenizer, max_len


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m abscot_plugin.generation.generate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder (tokenizer with V_abs)")
    parser.add_argument("--data", required=True, help="Dolci-Think JSONL rows")
    parser.add_argument("--mode", required=True, choices=[p.value for p in Phase], help="the teacher's phase")
    parser.add_argument("--out", required=True, help="output trace JSONL")
    parser.add_argument("--backend", choices=get_args(Backend), default=DEFAULT_BACKEND)
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="prefix + trace budget (default: the model's max_position_embeddings)",
    )
    defaults = TraceSettings()
    parser.add_argument("--m-min", type=int, default=defaults.m_min)
    parser.add_argument(
        "--m-max",
        type=int,
        default=defaults.m_max,
        help="longest trace; phase_a: abscot_m_max of the Phase A training (the trace room its rows reserve)",
    )
    parser.add_argument(
        "--sequence-len",
        type=int,
        default=None,
        help="phase_a: sequence_len of the Phase A training (default: the model length)",
    )
    parser.add_argument(
        "--cot-keep",
        choices=get_args(CotKeep),
        default=DEFAULT_COT_KEEP,
        help="phase_a: abscot_cot_keep of the Phase A training",
    )
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-symbols", type=int, default=DEFAULT_NUM_SYMBOLS)
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--id-field", default=DEFAULT_ID_FIELD)
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="rows per saved chunk (default: 4 batches for hf, 1024 rows for vllm)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="hf: auto = bfloat16 on CUDA, float32 on CPU (engines.hf_dtype); vllm: vLLM's own dtype rule",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_HF_BATCH_SIZE, help="hf backend: prompts per generate call"
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend: GPUs per engine")
    parser.add_argument(
        "--data-parallel-size",
        type=int,
        default=1,
        help="worker processes (engines) on this node, each on its own tensor-parallel-size GPUs",
    )
    parser.add_argument(
        "--num-nodes", type=int, default=1, help="nodes running this same command (shared filesystem); node 0 merges"
    )
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (0 .. num-nodes - 1)")
    parser.add_argument("--data-parallel-rank", type=int, default=None, help=argparse.SUPPRESS)  # a worker
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=DEFAULT_GPU_MEMORY_UTILIZATION, help="vllm backend"
    )
    parser.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="vllm backend: no CUDA graphs / compilation (default: on on CPU only, engines.cpu_engine_kwargs)",
    )
    args = parser.parse_args(argv)
    if args.chunk_size is None:
        args.chunk_size = 4 * args.batch_size if args.backend == "hf" else 1024
    if (
        min(
            args.chunk_size,
            args.batch_size,
            args.limit or 1,
            args.sequence_len or 1,
            args.tensor_parallel_size,
            args.data_parallel_size,
            args.num_nodes,
        )
        < 1
    ):
        parser.error(
            "--chunk-size, --batch-size, --limit, --sequence-len, --tensor-parallel-size, "
            "--data-parallel-size and --num-nodes must be >= 1"
        )
    if not 0 <= args.node_rank < args.num_nodes:
        parser.error(f"--node-rank must be in 0 .. {args.num_nodes - 1}")
    return args


def phase_a_layout(args: argparse.Namespace, max_model_len: int | None) -> RowLayout | None:
    """The layout of the Phase A training the command line describes (None in Phase B)."""
    if not Phase(args.mode).has_cot:
        return None
    try:
        return RowLayout.from_generate_args(args, max_model_len)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def visible_devices(count: int) -> list[str]:
    """The ``count`` GPU ids this node's workers split among them: ``CUDA_VISIBLE_DEVICES`` if set
    (SystemExit when it names fewer), else ``0 .. count-1``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    devices = [d for d in visible.split(",") if d.strip()]
    if len(devices) < count:
        raise SystemExit(
            f"error: data-parallel-size × tensor-parallel-size needs {count} GPUs; "
            f"CUDA_VISIBLE_DEVICES names {len(devices)}"
        )
    return devices[:count]


def run_local_workers(args: argparse.Namespace, argv: list[str]) -> None:
    """vLLM's offline data-parallel pattern: one process per data-parallel rank of this node, each
    with its own engine on its own GPUs (``CUDA_VISIBLE_DEVICES``) and its own chunks of rows
    (:func:`~.runner.owned_chunks`). The workers are independent (a dense model needs no collective between
    replicas); the first that fails stops the others and the run (the chunks saved stay)."""
    dp, tp = args.data_parallel_size, args.tensor_parallel_size
    devices = visible_devices(dp * tp)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "abscot_plugin.generation.generate", *argv, "--data-parallel-rank", str(rank)],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(devices[rank * tp : (rank + 1) * tp])},
        )
        for rank in range(dp)
    ]
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = next((rank for rank, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                raise SystemExit(
                    f"error: data-parallel worker {failed} failed (exit code {codes[failed]}); "
                    "rerun to resume from the saved chunks"
                )
            if all(code == 0 for code in codes):
                return
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait()


def run_worker(args: argparse.Namespace, settings: TraceSettings, layout: RowLayout | None, record: dict) -> None:
    """One data-parallel worker (started by :func:`run_local_workers`, or the only one): load
    the engine and generate this worker's unfinished chunks, streaming only its own rows."""
    rank = args.node_rank * args.data_parallel_size + (args.data_parallel_rank or 0)
    world = args.num_nodes * args.data_parallel_size
    decoder, tokenizer, max_len = load_decoder(args)
    writer = TraceWriter(args.out, record, args.chunk_size)
    wanted = owned_chunks(writer.chunk_size, rank, world, writer.done_chunks())
    rows = iter_rows(args.data, args.limit, args.id_field, wanted)
    generate_rank(
        decoder,
        SequenceBuilder(tokenizer, decoder.vocab),
        rows,
        args.mode,
        writer,
        settings,
        max_len,
        layout,
        args.skip_bad_rows,
        rank,
        world,
    )


def coordinate(
    args: argparse.Namespace, argv: list[str], settings: TraceSettings, layout: RowLayout | None, record: dict
) -> Summary | None:
    """Check every row (one streamed pass: JSON, unique names), run this node's workers (in this
    process when there is one in all), then on node 0 merge all chunks; None on other nodes."""
    writer = TraceWriter(args.out, record, args.chunk_size)
    num_rows = sum(1 for _ in iter_rows(args.data, args.limit, args.id_field))
    finished = finished_summary(writer, num_rows)
    if finished is not None:
        return finished
    resumed = writer.done_chunks()
    writer.start()
    start = time.perf_counter()
    if args.num_nodes * args.data_parallel_size == 1:
        run_worker(args, settings, layout, record)
    else:
        run_local_workers(args, argv)
        if args.node_rank > 0:
            print(f"node {args.node_rank}: its chunks are saved in {writer.parts}; node 0 merges", file=sys.stderr)
            return None
        wait_for_chunks(writer, -(-num_rows // writer.chunk_size))
    return merge_traces(writer, num_rows, resumed, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Generate one trace per row of ``--data`` into ``--out``; errors are one line (exit 1).
    With ``--data-parallel-size`` > 1 this process coordinates that many worker processes."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        settings = TraceSettings(args.m_min, args.m_max, args.temperature, args.seed, args.top_p)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    max_len = engine_length(args)
    layout = phase_a_layout(args, max_len)
    record = {
        "model": str(Path(args.model).resolve()),
        "data": str(Path(args.data).resolve()),
        "mode": args.mode,
        "max_model_len": max_len,
        "num_symbols": args.num_symbols,
        "id_field": args.id_field,
        "train_layout": asdict(layout) if layout else None,
        **asdict(settings),
    }
    # SIGTERM unwinds (stopping the workers) instead of leaving them running
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.data_parallel_rank is not None:
            run_worker(args, settings, layout, record)
            return
        summary = coordinate(args, argv, settings, layout, record)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if summary is not None:
        print(summary.line(), file=sys.stderr)
        print(f"traces: {args.out}")


if __name__ == "__main__":  # the guard vLLM's spawned workers need
    main()
