"""The axolotl dataset strategy behind both Abstract-CoT formats: ``bottleneck`` (Phase A) and
``self_distill`` (Phase B), one :class:`~abscot_plugin.core.choices.Phase` each.

Rows are Dolci-Think chat rows; traces come from ``abscot_trace_file`` (matched by row name,
:func:`~abscot_plugin.core.rows.row_id_of`), a row's ``abstract_trace`` field, or (Phase A without
either) round-1 random traces.

With ``abscot_skip_bad_rows`` malformed rows are skipped and counted by kind; the counts of each
tokenised dataset are summed once its ``datasets.map`` is done and kept with the dataset
(:mod:`.data_counts`). ``axolotl preprocess`` logs them per dataset as it tokenises;
``axolotl train`` logs the run's totals once the trainer exists (:func:`log_data_summary`), also
when the data came from the prepared-dataset cache.
"""

from __future__ import annotations

import logging
import tempfile

from axolotl.prompt_tokenizers import DatasetWrappingStrategy
from axolotl.utils.logging import get_logger
from datasets import Dataset

from ..args import INPUT_ARGS, AbsCoTArgs, RowLayout
from ..core.choices import Phase
from ..core.rows import BadRowError, ReasoningRow, parse_chat_row, row_id_of
from ..core.traces import load_trace_file, parse_trace
from ..tokens.sequences import Example, SequenceBuilder
from ..tokens.vocab import AbstractVocab
from . import data_counts

LOG = get_logger("axolotl.integrations.abscot")
TRACE_FIELD = "abstract_trace"


class AbstractCoTStrategy(DatasetWrappingStrategy):
    """Batched tokenising strategy: axolotl calls :meth:`wrap_dataset`, which maps
    :meth:`tokenize_prompt` over the rows and records how many were skipped."""

    def __init__(self, tokenizer, cfg, phase: Phase, ds_cfg=None):
        _require_plugin(cfg)
        self.phase = phase
        self.name = phase.format_name
        self.source = str((ds_cfg or {}).get("path") or "the dataset")
        self.preprocess_only = bool(cfg.is_preprocess)  # `axolotl preprocess`: no trainer will report
        self.count_dir: str | None = None  # set by wrap_dataset while its map runs
        args = AbsCoTArgs.from_cfg(cfg)
        self.num_symbols = args.abscot_num_symbols
        self.layout = RowLayout.from_cfg(cfg)
        self.split = phase.has_cot and args.abscot_phase_a_layout == "split"
        if self.split:
            LOG.warning(
                "abscot %s: abscot_phase_a_layout: split, the two-pass ablation: nothing of the CoT reaches "
                "the answer (docs/toy_study.md); use one_pass for real runs",
                self.name,
            )
        self.trace_seed = args.abscot_trace_seed
        self.skip_bad = args.abscot_skip_bad_rows
        self.id_field = args.abscot_id_field
        try:
            vocab = AbstractVocab.from_tokenizer(tokenizer, self.num_symbols)
        except ValueError as exc:
            raise ValueError(
                f"abscot {self.name}: the tokenizer lacks the abstract vocabulary ({exc}). "
                "List abscot_plugin.AbsCoTPlugin under `plugins:`; it extends the tokenizer."
            ) from None
        self.builder = SequenceBuilder(tokenizer, vocab)
        self.traces = (
            load_trace_file(args.abscot_trace_file, self.num_symbols, self.layout.m_max)
            if args.abscot_trace_file
            else None
        )

    @property
    def supports_batched(self) -> bool:
        return True

    def wrap_dataset(self, dataset, process_count: int | None = None, keep_in_memory: bool | None = False, **kwargs):
        """Tokenise ``dataset`` with axolotl's ``TokenizedPromptDataset`` (``datasets.map`` over
        ``process_count`` processes) and record its row counts with it (:mod:`.data_counts`).

        The counting folder is an attribute of the strategy, so each tokenisation has its own map
        fingerprint and ``datasets``' map cache never hands back rows without running the
        batches. Streamed data is mapped lazily: only per-batch log lines report its skips.
        """
        from axolotl.datasets import TokenizedPromptDataset, wrap_dataset_for_tokenized_prompt

        if not isinstance(dataset, Dataset):
            return wrap_dataset_for_tokenized_prompt(self, dataset, **kwargs)
        with tempfile.TemporaryDirectory(prefix="abscot_counts_") as folder:
            self.count_dir = folder
            try:
                out = TokenizedPromptDataset(
                    self, dataset, process_count=process_count, keep_in_memory=keep_in_memory, **kwargs
                )
            finally:
                self.count_dir = None
            counts = data_counts.sum_batches(folder, self.name)
        if counts.rows != len(dataset):
            raise RuntimeError(
                f"abscot {self.name}: counted {counts.rows} of the {len(dataset)} rows of {self.source} "
                "(some batches did not run in this tokenisation)"
            )
        if counts.rows and counts.num_skipped == counts.rows:
            raise ValueError(f"abscot {self.name}: every row of {self.source} was skipped ({counts.line()})")
        data_counts.record(out, counts)
        if counts.num_skipped:  # train reports the run's total later (log_data_summary)
            level = logging.INFO if self.preprocess_only else logging.DEBUG
            LOG.log(level, counts.line(f" from {self.source}"))
        return out

    def _trace_ids(self, row: dict, parsed) -> list[int]:
        if self.traces is not None:
            if parsed.row_id not in self.traces:
                raise BadRowError(parsed.row_id, "no_trace", "no trace for this id in abscot_trace_file")
            return self.builder.trace_ids(self.traces[parsed.row_id])
        if row.get(TRACE_FIELD) is not None:
            try:
                parse_trace(row[TRACE_FIELD], self.num_symbols, self.layout.m_max)
            except ValueError as exc:
                raise BadRowError(parsed.row_id, "bad_trace", str(exc)) from None
            return self.builder.trace_ids(row[TRACE_FIELD])
        if not self.phase.has_cot:
            raise BadRowError(
                parsed.row_id,
                "no_trace",
                f"self-distillation needs a trace: set abscot_trace_file or a '{TRACE_FIELD}' field",
            )
        return self.builder.random_trace_ids(parsed, self.num_symbols, self.trace_seed, self.layout.m_max)

    def _examples(self, parsed: ReasoningRow, trace_ids: list[int]) -> tuple[Example, ...]:
        """The training rows of one input row: one, or two under ``abscot_phase_a_layout: split``."""
        if self.split:
            return self.builder.split_examples(parsed, trace_ids, self.layout)
        return (self.builder.example(parsed, trace_ids, self.phase, self.layout),)

    def tokenize_prompt(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        if self.phase.has_cot:
            out.update(segment_ids=[], abscot_cot_cut=[])
        skipped: dict[str, int] = {}
        first_error = None
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        for row in rows:
            row_id = row_id_of(row, self.id_field)
            try:
                parsed = parse_chat_row(row, row_id, need_cot=self.phase.has_cot)
                examples = self._examples(parsed, self._trace_ids(row, parsed))
            except BadRowError as exc:
                if not self.skip_bad:
                    raise ValueError(
                        f"abscot {self.name}: {exc} (set abscot_skip_bad_rows: true to skip and count such rows)"
                    ) from None
                skipped[exc.kind] = skipped.get(exc.kind, 0) + 1
                first_error = first_error or str(exc)
                continue
            for ex in examples:
                out["input_ids"].append(ex.input_ids)
                out["attention_mask"].append([1] * len(ex.input_ids))
                out["labels"].append(ex.labels)
                if self.phase.has_cot:
                    out["segment_ids"].append(ex.segment_ids)
                    out["abscot_cot_cut"].append(ex.cot_cut)
        if self.count_dir is not None:
            data_counts.write_batch(self.count_dir, len(rows), skipped)
        if skipped:
            # counted batches are summed by wrap_dataset; a lone batch (streaming) reports itself
            LOG.log(
                logging.DEBUG if self.count_dir is not None else logging.WARNING,
                "abscot %s: skipped %d of %d rows in this batch (%s); first: %s",
                self.name,
                sum(skipped.values()),
                len(rows),
                ", ".join(f"{n}× {r}" for r, n in skipped.items()),
                first_error,
            )
        return out


def _require_plugin(cfg) -> None:
    """Fail when the plugin is not active: axolotl only logs a plugin that failed to import, and
    training would go on with the abstract keys ignored. The plugin is recognised by the config
    model it contributes (:data:`~abscot_plugin.args.INPUT_ARGS`), so that this module does not
    import the plugin, which imports it (:func:`log_data_summary`)."""
    from axolotl.integrations.base import PluginManager

    plugins = PluginManager.get_instance().plugins.values()
    active = any(p.get_input_args() == INPUT_ARGS for p in plugins)
    if not active:
        raise RuntimeError(
            "abscot dataset formats need the abscot plugin: add `plugins: [abscot_plugin.AbsCoTPlugin]` "
            "to the config, and check the log above for an import error of abscot_plugin"
        )


def log_data_summary(cfg, dataset) -> None:
    """Log the run's skipped rows by kind (from the counts recorded with the data, also when it
    came from the prepared-dataset cache) and how many Phase A rows had their CoT cut to fit."""
    if dataset is None:
        return
    totals = data_counts.recorded(dataset)
    if totals is None and cfg.abscot_skip_bad_rows:
        LOG.warning(
            "abscot: the training data carries no count of skipped rows (streamed, or prepared by "
            "an older abscot); see the per-batch lines of its tokenisation"
        )
    for counts in (totals or {}).values():
        if counts.num_skipped:
            LOG.info(counts.line())
    if "abscot_cot_cut" not in getattr(dataset, "column_names", []):
        return
    cuts = dataset["abscot_cot_cut"]
    cut_rows = sum(1 for c in cuts if c)
    LOG.info(
        "abscot bottleneck data: %d rows; CoT cut to fit sequence_len in %d (%.1f%%), %d tokens cut in all",
        len(cuts),
        cut_rows,
        100.0 * cut_rows / max(1, len(cuts)),
        sum(cuts),
    )
