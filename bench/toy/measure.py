"""What the toy study measures on a checkpoint (docs/toy_study.md), in-process.

* :func:`evaluate` — the lm-eval tasks' decode and scoring without lm-eval's harness: the model
  class of ``eval_tasks/`` (``abscot-hf``) decodes each problem with the task's own
  ``generation_kwargs`` (plus overrides) and each answer is scored by the task's scorer, so an entry
  is the per-sample log entry lm-eval would write (``python -m abscot_plugin.eval_cli`` gives the same
  numbers; one process for every model saves lm-eval's start-up per checkpoint).
* :func:`trace_stats` — length, symbol entropy, distinct traces, collapse.
* :func:`bottleneck_probe` — a Phase A model's answer under the bottleneck mask, teacher-forced
  after a trace it sampled from ``x c <beginabstract>``: with the row's own CoT, and with another
  row's CoT (does the answer follow the CoT through z?).
* :func:`trace_probe` — a Phase B model's answer after its own trace and after another problem's
  trace (does the answer use what the trace says?).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from abscot_plugin import segments as seg
from abscot_plugin.decode import HFDecoder, TraceSettings
from abscot_plugin.eval_cli import task_generation_kwargs
from abscot_plugin.lm_eval_models import AbsCoTHFLM, DecodeSpec
from abscot_plugin.prompts import ReasoningRow, parse_chat_row
from abscot_plugin.scoring import sample_metrics, scored_entry
from abscot_plugin.sequences import IGNORE, SequenceBuilder
from abscot_plugin.traces import parse_trace

COLLAPSE_SHARE = 0.1  # fewer distinct traces than this share of the problems: collapsed


def evaluate(
    model_dir: str | Path, docs: list[dict], task: str, overrides: dict[str, Any], batch_size: int = 64
) -> list[dict]:
    """Decode and score ``docs`` (MATH-500 rows: ``problem``, ``answer``) as ``task`` of
    ``eval_tasks/`` (``math500_abscot`` or ``math500_verbal``) does, its ``generation_kwargs``
    updated by ``overrides``; one scored entry per doc (:func:`abscot_plugin.scoring.scored_entry`)."""
    spec = DecodeSpec.from_gen_kwargs({**task_generation_kwargs([task])[task], **overrides})
    lm = AbsCoTHFLM(pretrained=str(model_dir), batch_size=batch_size, device="cpu")
    entries = []
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        ids = [f"{task}:{start + i}" for i in range(len(chunk))]
        records = lm.decode([d["problem"] for d in chunk], spec, ids)
        entries.extend(scored_entry(r, str(d["answer"])) for r, d in zip(records, chunk, strict=True))
    return entries


def entropy_bits(counts: Counter) -> float:
    """Shannon entropy (bits) of a frequency table."""
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values() if n) if total else 0.0


def trace_stats(traces: list[str], num_symbols: int = 64, m_max: int = 128) -> dict[str, float]:
    """Statistics of a set of traces (symbol-name strings): mean and sd of the length, entropy of
    the symbol frequencies (bits; log2 64 = 6 for uniform symbols), share of distinct traces,
    and ``collapsed`` (1.0 when fewer than :data:`COLLAPSE_SHARE` of them are distinct)."""
    symbols = [parse_trace(t, num_symbols, m_max) for t in traces]
    lengths = [len(s) for s in symbols]
    distinct = len(set(traces)) / len(traces)
    return {
        "trace_len": statistics.fmean(lengths),
        "trace_len_sd": statistics.pstdev(lengths),
        "symbol_entropy": entropy_bits(Counter(sym for s in symbols for sym in s)),
        "distinct": distinct,
        "collapsed": float(distinct < COLLAPSE_SHARE),
    }


def summarize(entries: list[dict], num_symbols: int = 64, m_max: int = 128) -> dict[str, float]:
    """Means of the task metrics over ``entries``, plus :func:`trace_stats` for abstract ones."""
    metrics = [sample_metrics(e) for e in entries]
    out = {key: statistics.fmean(m[key] for m in metrics) for key in metrics[0]}
    if entries[0]["mode"] == "abstract":
        out.update(trace_stats([e["trace"] for e in entries], num_symbols, m_max))
    return out


class Probe:
    """A checkpoint, its tokenizer and vocabulary, the sequence builder and the HF decoder."""

    def __init__(self, model_dir: str | Path, sequence_len: int, train_m_max: int, batch_size: int = 64):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from abscot_plugin.vocab import AbstractVocab

        tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, 64))
        self.decoder = HFDecoder(self.model, tok, self.builder.vocab, batch_size=batch_size)
        self.sequence_len, self.train_m_max, self.batch_size = sequence_len, train_m_max, batch_size

    def traces(self, rows: list[ReasoningRow], with_cot: bool, settings: TraceSettings) -> list[list[int]]:
        """Stage-1 traces from ``x c <beginabstract>`` (``with_cot``) or ``x <beginabstract>``."""
        b = self.builder
        prefixes = [
            b.phase_a_prefix(r, self.sequence_len, self.train_m_max)[0] if with_cot else b.phase_b_prefix(r)
            for r in rows
        ]
        return self.decoder.traces(prefixes, settings)

    def answer_accuracy(self, rows: list[ReasoningRow], traces: list[list[int]], with_cot: bool) -> float:
        """Share of rows whose whole answer the model predicts, teacher-forced after their trace,
        under the bottleneck mask (plain causal attention when there is no CoT)."""
        examples = [
            self.builder.example(r, t, with_cot, self.sequence_len, m_max=self.train_m_max)
            for r, t in zip(rows, traces, strict=True)
        ]
        correct = []
        for start in range(0, len(examples), self.batch_size):
            correct += _answer_correct(self.model, examples[start : start + self.batch_size], self.decoder.pad_id)
        return sum(correct) / len(correct)


@torch.no_grad()
def _answer_correct(model, examples: list, pad_id: int) -> list[bool]:
    """Teacher-forced exact match of each example's answer under the bottleneck mask."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    segments = torch.full((len(examples), width), seg.PAD)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        answer = torch.tensor(ex.segment_ids) == seg.ANSWER
        labels[row, :n] = torch.tensor(ex.labels).masked_fill(~answer, IGNORE)
        segments[row, :n] = torch.tensor(ex.segment_ids)
    logits = model(input_ids=ids, attention_mask=seg.dense_mask(segments)).logits
    predicted = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    scored = target != IGNORE
    return (((predicted == target) | ~scored).all(1) & scored.any(1)).tolist()


def _neighbours(rows: list[ReasoningRow]) -> list[tuple[int, int]]:
    """(i, i+1 mod n) for every row whose neighbour has another answer."""
    return [(i, (i + 1) % len(rows)) for i in range(len(rows)) if rows[i].answer != rows[(i + 1) % len(rows)].answer]


def bottleneck_probe(
    model_dir: str | Path, rows: list[dict], settings: TraceSettings, sequence_len: int, train_m_max: int,
) -> dict[str, float]:
    """Phase A model ``model_dir`` on Dolci rows ``rows``: ``own_cot`` = share of rows whose answer
    it gets right (teacher-forced, bottleneck mask) after a trace sampled from its own ``x c
    <beginabstract>``; ``swapped_cot`` = share, among rows whose neighbour has another answer,
    whose answer follows the neighbour's CoT when given it instead (the neighbour's answer)."""
    probe = Probe(model_dir, sequence_len, train_m_max)
    parsed = [parse_chat_row(r, r["id"]) for r in rows]
    swapped = [
        ReasoningRow(f"{parsed[i].row_id}+cot", parsed[i].messages, parsed[j].cot, parsed[j].answer)
        for i, j in _neighbours(parsed)
    ]
    return {
        name: probe.answer_accuracy(group, probe.traces(group, True, settings), True)
        for name, group in (("own_cot", parsed), ("swapped_cot", swapped))
    }


def trace_probe(
    model_dir: str | Path, rows: list[ReasoningRow], settings: TraceSettings, sequence_len: int, train_m_max: int,
) -> dict[str, float]:
    """Phase B model ``model_dir`` on prompt/answer rows: ``own_trace`` = teacher-forced answer
    accuracy after the trace it samples from ``x <beginabstract>``; ``swapped_trace`` = the same,
    among rows whose neighbour has another answer, after the neighbour's trace instead. Equal
    accuracies: the answer does not use what the trace says."""
    probe = Probe(model_dir, sequence_len, train_m_max)
    traces = probe.traces(rows, False, settings)
    pairs = _neighbours(rows)
    return {
        "own_trace": probe.answer_accuracy(rows, traces, False),
        "swapped_trace": probe.answer_accuracy([rows[i] for i, _ in pairs], [traces[j] for _, j in pairs], False),
    }
