"""The chunked, resumable trace-generation runner behind the generate CLI
(:mod:`abscot_plugin.generation.generate`), one worker process or several.

Rows are read as a stream and cut into fixed chunks by row index (``chunk_size``); each finished
chunk is saved atomically in ``OUT.parts/`` (:class:`~abscot_plugin.core.traces.TraceWriter`), so
an interrupted run (killed at any point) resumes at the missing chunks; at the end the chunks are
merged in row order into ``OUT`` and ``OUT.meta.json`` records the settings and counts
(:class:`Summary`). Resuming with different settings is refused.

Data parallel (vLLM's offline multi-process pattern; docs/scale.md): worker ``rank`` of ``world``
generates the chunks ``k`` with ``k % world`` = its rank (:func:`owned_chunks`), each in its own
process with its own engine (started by the CLI); the chunks do not depend on ``world``, so
neither do the traces (up to float rounding between batch shapes, which the fixed chunks keep
equal for the HF backend: :mod:`abscot_plugin.generation.decode`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path

from tqdm import tqdm

from ..args import RowLayout
from ..core.choices import Phase
from ..core.traces import TraceSettings, TraceWriter, trace_record
from ..tokens.sequences import SequenceBuilder
from .decode import Decoder
from .prefixes import build_prefixes


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
    prefixes = build_prefixes(
        rows, builder, phase, settings.m_max, max_model_len, layout, skip_bad_rows, counts.skipped_kinds
    )
    counts.skipped_bad_rows = sum(counts.skipped_kinds.values())
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


def wait_for_chunks(writer: TraceWriter, num_chunks: int, poll_s: float = 10.0) -> None:
    """Node 0 of a multi-node run: wait until the other nodes have saved their chunks."""
    missing = set(range(num_chunks)) - writer.done_chunks()
    if missing:
        print(f"waiting for {len(missing)} chunks from the other nodes in {writer.parts}", file=sys.stderr, flush=True)
    while set(range(num_chunks)) - writer.done_chunks():
        time.sleep(poll_s)
