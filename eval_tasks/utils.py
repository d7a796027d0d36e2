"""Helpers for the abscot lm-eval tasks in this folder (referenced from the YAMLs by ``!function``).

Importing this module also registers the ``abscot-hf`` and ``abscot-vllm`` model classes: stock
``lm_eval`` imports a task folder's ``utils.py`` while it reads a task given as a YAML path, before
it builds the model, so ``lm_eval --model abscot-hf --tasks eval_tasks/math500_abscot.yaml
--include_path eval_tasks`` works (0.4.11 needs the include path too, see README.md). By task name
it imports it too late; use ``python -m abscot_plugin.eval.eval_cli`` then.
"""

from __future__ import annotations

import json
from typing import Any

import datasets

import abscot_plugin.eval.lm_eval_models  # noqa: F401  (registers the model classes with lm-eval)
from abscot_plugin.eval.scoring import DecodeRecord, gsm8k_gold, parse_gold, sample_metrics, scored_entry


def load_docs(
    hub_path: str, hub_split: str, override_key: str, hub_name: str | None = None, **metadata: Any
) -> datasets.DatasetDict:
    """The task's documents as a ``test`` split: the hub dataset, or the local JSON/JSONL file
    given as ``--metadata '{"<override_key>": "/path/file.jsonl"}'`` (offline runs, tests)."""
    local = metadata.get(override_key)
    if local:
        docs = datasets.load_dataset("json", data_files=str(local), split="train")
    else:
        docs = datasets.load_dataset(hub_path, hub_name, split=hub_split)
    return datasets.DatasetDict({"test": docs})


def _require(dataset: datasets.Dataset, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{what} documents lack column(s) {missing}; found {dataset.column_names}")


def _check_golds(dataset: datasets.Dataset, what: str) -> datasets.Dataset:
    """Fail before any generation if a gold answer is unreadable (not after hours of decoding)."""
    for index, gold in enumerate(dataset["gold"]):
        try:
            parse_gold(gold)
        except ValueError as exc:
            raise ValueError(f"{what} document {index}: {exc}") from None
    return dataset


def process_math500(dataset: datasets.Dataset) -> datasets.Dataset:
    """MATH-500 rows (problem, answer, …): the gold answer is the ``answer`` field."""
    _require(dataset, ("problem", "answer"), "MATH-500")
    return _check_golds(dataset.map(lambda doc: {"gold": doc["answer"]}), "MATH-500")


def process_gsm8k(dataset: datasets.Dataset) -> datasets.Dataset:
    """GSM8K rows (question, answer ending ``#### N``): problem = question, gold = N."""
    _require(dataset, ("question", "answer"), "GSM8K")

    def convert(doc: dict, index: int) -> dict:
        try:
            return {"problem": doc["question"], "gold": gsm8k_gold(doc["answer"])}
        except ValueError as exc:
            raise ValueError(f"GSM8K document {index}: {exc}") from None

    return _check_golds(dataset.map(convert, with_indices=True), "GSM8K")


def score_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: each response (a JSON decode record) becomes its log entry, as JSON, with the
    extracted final answer and its score (``--log_samples`` writes it as ``filtered_resps``;
    lm-eval stringifies whatever a filter returns, so it stays JSON)."""
    return [
        [json.dumps(scored_entry(DecodeRecord.from_json(r), doc["gold"]), ensure_ascii=False) for r in doc_resps]
        for doc_resps, doc in zip(resps, docs, strict=True)
    ]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Per-sample metrics of the (first) scored entry."""
    return sample_metrics(json.loads(results[0]))
