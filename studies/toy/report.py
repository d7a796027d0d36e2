"""The toy study's report (docs/toy_study.md): the table and the accuracy-vs-tokens figure, mean ±
sd over seeds, from the study's ``results/*.json`` (:mod:`studies.toy.study` writes them)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

# the ablation cells of studies.toy.study.CELLS, in the table's order, and the baselines
CELL_TITLES = {
    "one_pass": "Abstract-CoT, two-stage decode",
    "m_min_off": "ablation: m_min off (1)",
    "mean_init": "ablation: mean init of new rows",
    "split": "ablation: split Phase A ([x;c;z], [x;z;y])",
}
BASELINES = {
    "nocot": "no-CoT (answer only)",
    "verbal": "verbal CoT (base model)",
    "oracle": "reference: Phase B on ideal traces (one symbol per state)",
}


def aggregate(results: list[dict]) -> dict[tuple[str, int], dict[str, tuple[float, float, int]]]:
    """(cell, round) -> metric -> (mean, sd, seeds)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["cell"], r.get("round", 0)), []).append(r)
    out = {}
    for key, rows in groups.items():
        metrics = {}
        for name in rows[0]:
            values = [r[name] for r in rows if isinstance(r.get(name), (int, float)) and not isinstance(r[name], bool)]
            if len(values) == len(rows) and name not in ("seed", "round"):
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                metrics[name] = (statistics.fmean(values), sd, len(values))
        out[key] = metrics
    return out


def _cell(stats: dict, name: str, scale: float = 1.0, digits: int = 1) -> str:
    if name not in stats:
        return "–"
    mean, sd, _ = stats[name]
    return f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def report(out: Path, publish: Path | None) -> Path:
    """``report/results.md`` and ``report/accuracy_vs_tokens.png`` from ``results/*.json``."""
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    if not results:
        raise SystemExit(f"no results under {out / 'results'}")
    stats = aggregate(results)
    lines = [
        "| model | round | seeds | accuracy % | generated tokens | trace length | symbol entropy (bits) "
        "| distinct traces % | collapsed share | distinct answers | symbols naming the true state % "
        "| answer = state of last symbol % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    order = [*BASELINES, *CELL_TITLES]
    for (cell, t), s in sorted(stats.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        title = BASELINES.get(cell) or CELL_TITLES[cell]
        lines.append(
            "| "
            + " | ".join(
                [
                    title,
                    str(t) if t else "–",
                    str(s["accuracy"][2]),
                    _cell(s, "accuracy", 100),
                    _cell(s, "total_tokens"),
                    _cell(s, "trace_len"),
                    _cell(s, "symbol_entropy", digits=2),
                    _cell(s, "distinct", 100),
                    _cell(s, "collapsed", digits=2),
                    _cell(s, "distinct_answers"),
                    _cell(s, "oracle_symbols_right", 100),
                    _cell(s, "answer_reads_trace", 100),
                ]
            )
            + " |"
        )
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    (folder / "results.md").write_text(text, encoding="utf-8")
    plot(stats, folder / "accuracy_vs_tokens.png")
    print(text)
    if publish is not None:
        publish.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "accuracy_vs_tokens.png"):
            shutil.copy2(folder / name, publish / name)
        print(f"published to {publish}", flush=True)
    return folder


def plot(stats: dict, path: Path) -> None:
    """Accuracy vs mean generated tokens (log x), mean ± sd over seeds; rounds of a cell joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, cell in enumerate([*BASELINES, *CELL_TITLES]):
        points = sorted((t, s) for (c, t), s in stats.items() if c == cell)
        if not points:
            continue
        xs = [s["total_tokens"][0] for _, s in points]
        ys = [100 * s["accuracy"][0] for _, s in points]
        err = [100 * s["accuracy"][1] for _, s in points]
        label = BASELINES.get(cell) or CELL_TITLES[cell]
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            marker="os^vDPX"[i % 7],
            capsize=3,
            label=label,
            linestyle="-" if len(points) > 1 else "none",
        )
        for (t, _), x, y in zip(points, xs, ys, strict=True):
            if t:
                ax.annotate(f"T{t}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    from abscot_plugin.testing.toy import CHANCE

    ax.axhline(100 * CHANCE, color="grey", linestyle=":", label=f"chance ({100 * CHANCE:.1f} %: 12 reachable answers)")
    ax.set_xscale("log")
    ax.set_xlabel("mean generated tokens per problem (abstract + answer)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Toy task (S4 state tracking): accuracy vs tokens, mean ± sd over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
