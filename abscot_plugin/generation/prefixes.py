"""The decode prompts of trace generation, one per data row.

Phase A teacher (the previous round's model): prefix x c <beginabstract>, exactly the prefix of
the row that the next Phase A training builds (:meth:`SequenceBuilder.phase_a_prefix` with that
training's :class:`~abscot_plugin.args.RowLayout`), so the CoT is cut exactly as training cuts it,
and a row that training would reject is an error here too. If ``max_model_len`` is below the
layout's ``sequence_len``, the prefix is built for ``max_model_len`` instead (x whole, less CoT):
such prefixes are marked ``short`` (counted, and the run's summary warns). Phase B teacher (this
round's Phase A model): x <beginabstract>, never cut. A prefix that leaves no room for ``m_max``
symbols and ``<endabstract>`` within ``max_model_len`` is a bad row (kind ``too_long``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..args import RowLayout
from ..core.choices import Phase
from ..core.rows import BadRowError, ReasoningRow, parse_chat_row
from ..tokens.sequences import SequenceBuilder


@dataclass(frozen=True)
class Prefix:
    """One row's decode prompt; ``cot_cut``: CoT tokens cut; ``short``: less CoT than its
    training row has (``max_model_len`` below the training ``sequence_len``)."""

    row_id: str
    ids: list[int]
    cot_cut: int = 0
    short: bool = False


def row_prefix(
    builder: SequenceBuilder,
    row: ReasoningRow,
    phase: Phase,
    m_max: int,
    max_model_len: int | None,
    layout: RowLayout | None,
) -> Prefix:
    """The decode prompt of one parsed row (module docstring); raises :class:`BadRowError`.
    ``m_max``: the longest trace decoded (Phase B's room); a Phase A prefix reserves
    ``layout.m_max``."""
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
    skipped: dict[str, int],
) -> list[Prefix]:
    """Decode prompts of the teacher of ``phase`` (``layout``: the Phase A training's, needed for
    Phase A); a bad row raises (naming it) unless skipped and counted by kind in ``skipped``."""
    phase = Phase(phase)
    if phase.has_cot and layout is None:
        raise ValueError("Phase A prefixes need the layout of the Phase A training (a RowLayout)")
    prefixes = []
    for row_id, row in rows:
        try:
            parsed = parse_chat_row(row, row_id, need_cot=phase.has_cot)
            prefixes.append(row_prefix(builder, parsed, phase, m_max, max_model_len, layout))
        except BadRowError as exc:
            if not skip_bad_rows:
                raise ValueError(f"{exc} (pass --skip-bad-rows to skip and count such rows)") from None
            skipped[exc.kind] = skipped.get(exc.kind, 0) + 1
    return prefixes
