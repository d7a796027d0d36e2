"""Evaluation report: lm-eval result files of several models/rounds as one markdown table (next to
the paper's and the reproduction's MATH-500 numbers) and an accuracy-vs-tokens plot.

    python -m abscot_plugin.eval.report [LABEL=]RESULTS [...] --out build/report.md [--plot report.png]

``RESULTS`` is a ``results_*.json`` written by lm-eval (``--output_path``) or a folder searched for
them; ``LABEL=`` names the run (default: the evaluated checkpoint's last two path parts).
Below the table, a warning line names each run and task whose answers hit the ``max_gen_toks``
budget more than :data:`TRUNCATION_LIMIT` of the time (a cut answer scores 0, so the budget, not
the model, cost that accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.fileio import atomic_path, write_atomic

FILTER = "boxed"
COLUMNS = (
    "accuracy",
    "abstract_tokens",
    "answer_tokens",
    "total_tokens",
    "hit_m_max",
    "unparseable",
    "answer_truncated",
)
# share of answers cut at the answer budget above which a row gets a warning (a cut answer scores 0)
TRUNCATION_LIMIT = 0.01
WARNING_PREFIX = "**Warning: "


@dataclass(frozen=True)
class Row:
    """One task of one run; metrics absent for a task (e.g. trace metrics of verbal tasks) are None."""

    run: str
    task: str
    n: int | None
    metrics: dict[str, float | None]
    accuracy_stderr: float | None = None
    reference: bool = False


# MATH-500 with Qwen3-4B (docs/method.md, "Evaluation"): accuracy %, mean generated tokens.
REFERENCE_ROWS = (
    Row("paper: base model, verbal CoT", "math500", None, {"accuracy": 0.832, "total_tokens": 1087}, reference=True),
    Row("paper: Abstract-CoT warm-up", "math500", None, {"accuracy": 0.862, "total_tokens": 168}, reference=True),
    Row("paper: warm-up + RL", "math500", None, {"accuracy": 0.898, "total_tokens": 141}, reference=True),
    Row("reproduction: baseline", "math500", None, {"accuracy": 0.846, "total_tokens": 1045}, reference=True),
    Row(
        "reproduction: warm-up (T=3, 5k, LoRA)",
        "math500",
        None,
        {"accuracy": 0.720, "total_tokens": 432},
        reference=True,
    ),
)


def find_results(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every ``results_*.json`` below it (sorted)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"no results file or folder at {p}")
    found = sorted(p.rglob("results_*.json"))
    if not found:
        raise FileNotFoundError(f"no results_*.json under {p}")
    return found


def default_label(results: dict) -> str:
    """The evaluated checkpoint's last two path parts (e.g. ``round3/merged``)."""
    config = results.get("config", {})
    model_args = config.get("model_args") or {}
    if isinstance(model_args, str):
        model_args = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv)
    pretrained = config.get("abscot_pretrained") or model_args.get("pretrained") or config.get("model", "?")
    return "/".join(Path(str(pretrained)).parts[-2:])


def rows_of(path: Path, label: str | None = None) -> list[Row]:
    """The task rows of one lm-eval results file (groups and tasks without our metrics skipped)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        per_task = results["results"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{path}: not an lm-eval results file ({exc})") from None
    run = label or default_label(results)
    n_samples = results.get("n-samples", {})
    rows = []
    for task, values in sorted(per_task.items()):
        if f"accuracy,{FILTER}" not in values:
            continue
        metrics = {name: values.get(f"{name},{FILTER}") for name in COLUMNS}
        stderr = values.get(f"accuracy_stderr,{FILTER}")
        rows.append(
            Row(
                run,
                task,
                n_samples.get(task, {}).get("effective"),
                metrics,
                stderr if isinstance(stderr, float) else None,
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown_table(rows: Iterable[Row]) -> str:
    """The report table: our runs first, then the reference rows (italic)."""
    lines = [
        "| run | task | n | accuracy % | abstract tokens | answer tokens | total tokens | m_max hit % "
        "| unparseable % | answer truncated % |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        m = row.metrics
        acc = _pct(m.get("accuracy"))
        if row.accuracy_stderr is not None:
            acc += f" ± {100 * row.accuracy_stderr:.1f}"
        cells = [
            row.run,
            row.task,
            "–" if row.n is None else str(row.n),
            acc,
            _num(m.get("abstract_tokens")),
            _num(m.get("answer_tokens")),
            _num(m.get("total_tokens")),
            _pct(m.get("hit_m_max")),
            _pct(m.get("unparseable")),
            _pct(m.get("answer_truncated")),
        ]
        if row.reference:
            cells = [f"*{c}*" if c != "–" else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def truncation_warnings(rows: Iterable[Row]) -> list[str]:
    """A warning line for each of our rows (not the reference rows) whose share of answers that
    used the whole ``max_gen_toks`` budget without stopping exceeds :data:`TRUNCATION_LIMIT`."""
    lines = []
    for row in rows:
        share = row.metrics.get("answer_truncated")
        if row.reference or share is None or share <= TRUNCATION_LIMIT:
            continue
        lines.append(
            f"{WARNING_PREFIX}{row.run}, {row.task}: {_pct(share)} % answers truncated** (more than "
            f"{100 * TRUNCATION_LIMIT:g} %): they used the whole max_gen_toks budget without stopping "
            "and score 0; raise max_gen_toks (eval_tasks/README.md)."
        )
    return lines


def plot(rows: list[Row], path: Path) -> None:
    """Accuracy vs mean total generated tokens (log scale): our runs coloured by run with a
    marker per dataset (hollow: verbal CoT), reference rows as annotated grey squares."""
    fig, ax = pyplot().subplots(figsize=(9, 5.5))
    colours = {run: f"C{i % 10}" for i, run in enumerate(dict.fromkeys(r.run for r in rows if not r.reference))}
    references = 0
    for row in rows:
        acc, tokens = row.metrics.get("accuracy"), row.metrics.get("total_tokens")
        if acc is None or tokens is None:
            continue
        x, y = max(tokens, 1.0), 100 * acc
        if row.reference:
            ax.scatter([x], [y], marker="s", s=36, color="grey", alpha=0.8)
            offset = (-6, 5) if references % 2 == 0 else (-6, -11)  # alternate: neighbours overlap
            ax.annotate(
                row.run, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color="dimgrey", ha="right"
            )
            references += 1
            continue
        marker = "^" if row.task.startswith("gsm8k") else "o"
        verbal = row.task.endswith("_verbal")
        ax.scatter(
            [x],
            [y],
            marker=marker,
            s=48,
            label=f"{row.run} · {row.task}",
            facecolors="none" if verbal else colours[row.run],
            edgecolors=colours[row.run],
        )
    ax.set_xscale("log")
    ax.set_xlabel("mean generated tokens per problem (abstract + answer)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("Accuracy vs tokens (grey: paper / reproduction, MATH-500, Qwen3-4B)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    save_png(fig, path, dpi=120)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int) -> None:
    """Lay out a :func:`pyplot` figure, write it to ``path`` as PNG (atomically) and close it."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)


def build_report(inputs: list[str], out: Path, plot_path: Path | None) -> list[Row]:
    """Read ``inputs`` (``[LABEL=]path``), write the markdown report (and plot); return the rows."""
    rows: list[Row] = []
    for spec in inputs:
        label, sep, path = spec.partition("=")
        if not sep or not label or Path(spec).exists():
            label, path = None, spec
        for file in find_results(path):
            rows.extend(rows_of(file, label))
    if not rows:
        raise ValueError(f"no abscot task results in {inputs}")
    all_rows = rows + list(REFERENCE_ROWS)
    text = "# Evaluation report\n\n" + markdown_table(all_rows)
    warnings = truncation_warnings(rows)
    if warnings:
        text += "\n" + "\n\n".join(warnings) + "\n"
    text += (
        "\nTokens are per-problem means of generated tokens: abstract = trace symbols, answer = "
        "stage-2 tokens (stop token excluded), total = abstract + answer (the paper's token "
        "column). Reference rows (italic) are MATH-500 on Qwen3-4B: the paper and a public reproduction "
        "(docs/method.md).\n"
    )
    if plot_path is not None:
        plot(all_rows, plot_path)
        text += f"\n![accuracy vs tokens]({os.path.relpath(plot_path, out.parent)})\n"
    write_atomic(out, text)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="[LABEL=]results_*.json or a folder of them")
    parser.add_argument("--out", type=Path, required=True, help="markdown report to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write (default: OUT with .png)")
    parser.add_argument("--no-plot", action="store_true", help="write the table only")
    args = parser.parse_args(argv)
    plot_path = None if args.no_plot else (args.plot or args.out.with_suffix(".png"))
    try:
        rows = build_report(args.results, args.out, plot_path)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    print(args.out.read_text(encoding="utf-8"))
    print(f"{len(rows)} rows -> {args.out}" + (f", {plot_path}" if plot_path else ""))


if __name__ == "__main__":
    main()
