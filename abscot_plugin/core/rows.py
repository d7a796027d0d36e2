"""Dolci-Think data rows: how a row is named, split into prompt, verbal CoT and answer, and read
from JSONL (no torch, no transformers: the orchestrator names rows with the same rule).

A row is ``{"id": ..., "messages": [system?, user, assistant]}`` whose assistant message is
``<think>c</think>y``: the verbal CoT c and the answer y. Every malformed row raises a
:class:`BadRowError` naming the row and the kind of problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ID_FIELD = "id"

_THINK = re.compile(r"^\s*<think>(.*?)</think>(.*)$", re.DOTALL)


class BadRowError(ValueError):
    """A data row that cannot be turned into a training example.

    ``kind`` is a short, fixed name of the problem (``too_long``, ``no_think``, …) that logs group
    skipped rows by; ``reason`` is the full sentence, which may name lengths or values.
    """

    def __init__(self, row_id: str, kind: str, reason: str):
        super().__init__(f"row {row_id}: {reason}")
        self.row_id = row_id
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class ReasoningRow:
    """A chat row split into its prompt messages, verbal CoT and answer."""

    row_id: str
    messages: list[dict[str, str]]
    cot: str
    answer: str


def row_id_of(row: dict, id_field: str = DEFAULT_ID_FIELD) -> str:
    """A row's name in errors and trace files: its id field, else ``sha1:`` + a hash of its
    messages' roles and contents. Training and trace generation both name rows with this, so a
    trace generated for a row without an id still finds it in Phase B (the hash reads only role
    and content: ``datasets`` may add null columns to rows that ``json.loads`` reads without)."""
    value = row.get(id_field)
    if value is not None and value != "":
        return str(value)
    turns = row.get("messages")
    if isinstance(turns, list):
        turns = [[m.get("role"), m.get("content")] for m in turns if isinstance(m, dict)]
    return "sha1:" + hashlib.sha1(json.dumps(turns, default=str).encode()).hexdigest()[:12]


def parse_chat_row(row: dict, row_id: str, need_cot: bool = True) -> ReasoningRow:
    """Split a Dolci-Think row (``messages``: system?/user/assistant with ``<think>``) into parts.

    The assistant message is ``<think>c</think>y``; without ``need_cot`` a message without any
    think tag is all answer. A ``<think>`` without ``</think>``, a ``</think>`` without
    ``<think>``, or a think block after other text is malformed in both cases (kind ``bad_think``).
    Raises :class:`BadRowError` naming the row for every malformed input.
    """
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRowError(row_id, "messages", "'messages' must be a non-empty list")
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise BadRowError(row_id, "messages", "each message needs a string 'content'")
        if msg.get("role") not in ("system", "user", "assistant"):
            raise BadRowError(row_id, "role", f"unknown role {msg.get('role')!r}")
    if messages[-1]["role"] != "assistant":
        raise BadRowError(row_id, "role", "last message must be the assistant's")
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    if not any(m["role"] == "user" for m in prompt):
        raise BadRowError(row_id, "role", "no user message")
    reply = messages[-1]["content"]
    match = _THINK.match(reply)
    if match is None:
        _check_no_think_tags(reply, row_id)
        if need_cot:
            raise BadRowError(row_id, "no_think", "assistant message has no <think>…</think> block")
        cot, answer = "", reply
    else:
        cot, answer = match.group(1).strip(), match.group(2).strip()
    if need_cot and not cot:
        raise BadRowError(row_id, "empty_cot", "empty <think> block")
    if not answer:
        raise BadRowError(row_id, "empty_answer", "empty answer after </think>")
    return ReasoningRow(row_id, prompt, cot, answer)


def _check_no_think_tags(reply: str, row_id: str) -> None:
    """A reply that does not open with a whole think block must not contain a think tag at all."""
    opened, closed = "<think>" in reply, "</think>" in reply
    if not (opened or closed):
        return
    if not closed:
        reason = "assistant message has <think> without a closing </think>"
    elif not opened:
        reason = "assistant message has </think> without <think>"
    else:
        reason = "assistant message's think tags are not a <think>…</think> block at its start"
    raise BadRowError(row_id, "bad_think", reason)


def iter_rows(
    path: str | Path,
    limit: int | None = None,
    id_field: str = DEFAULT_ID_FIELD,
    wanted: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, str, dict]]:
    """Stream ``(index, name, row)`` for the first ``limit`` non-blank lines of a JSONL file
    (``index``: 0-based among them; ``name``: :func:`row_id_of`), one line in memory at a time.
    ``wanted(index)`` false: the line is counted but neither parsed nor yielded (a data-parallel
    rank reads only its own rows), and its name is not checked. Errors (not JSON, not an object,
    a name twice among the rows read) name the file and line."""
    seen: dict[str, int] = {}
    index = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and index >= limit:
                break
            if not line.strip():
                continue
            index += 1
            if wanted is not None and not wanted(index - 1):
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
            yield index - 1, row_id, row


def read_rows(path: str | Path, limit: int | None = None, id_field: str = DEFAULT_ID_FIELD) -> list[tuple[str, dict]]:
    """(name, row) for the first ``limit`` rows of a JSONL file, in memory (:func:`iter_rows`
    streams them)."""
    return [(row_id, row) for _, row_id, row in iter_rows(path, limit, id_field)]


def cot_text(cot: str) -> str:
    """How the verbal CoT c sits between the prompt and ``<beginabstract>`` in Phase A."""
    return cot.strip() + "\n"


def cot_steps(cot: str) -> list[str]:
    """CoT steps ℓ for round-1 random traces: its non-empty lines."""
    return [line for line in cot.split("\n") if line.strip()]
