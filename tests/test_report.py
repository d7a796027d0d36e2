"""The evaluation report (abscot_plugin.eval.report) over lm-eval results files of several runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abscot_plugin.eval.report import REFERENCE_ROWS, build_report, main, markdown_table, rows_of


def _results(path: Path, pretrained: str, tasks: dict[str, dict[str, float]], n: int = 500) -> Path:
    """A results file shaped as lm-eval 0.4.11 writes it (group entries carry no metrics)."""
    results = {"abscot_math": {"alias": "abscot_math"}}
    for task, metrics in tasks.items():
        entry = {"alias": f" - {task}"}
        for name, value in metrics.items():
            entry[f"{name},boxed"] = value
            entry[f"{name}_stderr,boxed"] = 0.01
        results[task] = entry
    payload = {
        "results": results,
        "n-samples": {task: {"original": n, "effective": n} for task in tasks},
        "config": {"model": "abscot-hf", "model_args": {"pretrained": pretrained}, "abscot_pretrained": pretrained},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


ABSTRACT = {
    "accuracy": 0.75,
    "unparseable": 0.02,
    "abstract_tokens": 40.0,
    "answer_tokens": 260.0,
    "total_tokens": 300.0,
    "hit_m_max": 0.125,
    "answer_truncated": 0.01,
}
VERBAL = {
    "accuracy": 0.8,
    "unparseable": 0.01,
    "answer_tokens": 1000.0,
    "total_tokens": 1000.0,
    "answer_truncated": 0.05,
}


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    return {
        "base": _results(
            tmp_path / "base" / "m" / "results_2026-01-01T00-00-00.json", "/ckpt/Qwen3-4B", {"math500_verbal": VERBAL}
        ),
        "round1": _results(
            tmp_path / "r1" / "m" / "results_2026-01-02T00-00-00.json",
            "/runs/round1/merged",
            {"math500_abscot": ABSTRACT, "gsm8k_abscot": {**ABSTRACT, "accuracy": 0.9}},
            n=200,
        ),
    }


def test_rows_of_reads_metrics_and_skips_groups(runs):
    rows = rows_of(runs["round1"])
    assert [r.task for r in rows] == ["gsm8k_abscot", "math500_abscot"]
    assert rows[1].run == "round1/merged" and rows[1].n == 200
    assert rows[1].metrics["total_tokens"] == 300.0 and rows[1].accuracy_stderr == 0.01
    (verbal,) = rows_of(runs["base"], label="baseline")
    assert verbal.run == "baseline" and verbal.metrics["abstract_tokens"] is None


def test_markdown_table_formats_rows_and_references(runs):
    rows = rows_of(runs["round1"]) + rows_of(runs["base"]) + list(REFERENCE_ROWS)
    table = markdown_table(rows).splitlines()
    assert table[0].startswith(
        "| run | task | n | accuracy % | abstract tokens | answer tokens | total tokens | m_max hit %"
    )
    assert "| round1/merged | math500_abscot | 200 | 75.0 ± 1.0 | 40 | 260 | 300 | 12.5 | 2.0 | 1.0 |" in table
    assert "| ckpt/Qwen3-4B | math500_verbal | 500 | 80.0 ± 1.0 | – | 1000 | 1000 | – | 1.0 | 5.0 |" in table
    assert "| *paper: Abstract-CoT warm-up* | *math500* | – | *86.2* | – | – | *168* | – | – | – |" in table
    assert "| *reproduction: warm-up (T=3, 5k, LoRA)* | *math500* | – | *72.0* | – | – | *432* | – | – | – |" in table
    assert len(table) == 2 + 3 + len(REFERENCE_ROWS)


def test_build_report_writes_markdown_and_plot(runs, tmp_path):
    out = tmp_path / "report" / "eval.md"
    rows = build_report([f"baseline={runs['base']}", str(runs["round1"].parents[1])], out, out.with_suffix(".png"))
    assert [r.run for r in rows] == ["baseline", "round1/merged", "round1/merged"]
    text = out.read_text()
    assert "| baseline | math500_verbal |" in text and "![accuracy vs tokens](eval.png)" in text
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.md", "eval.png"]  # no temp files left


def test_report_warns_when_answers_hit_the_budget(runs, tmp_path, capsys):
    """A row of ours with more than 1 % of answers cut at max_gen_toks gets a warning line (a cut
    answer scores 0: the budget is too small); 1 % exactly, other rows and reference rows do not."""
    out = tmp_path / "r.md"
    main([f"baseline={runs['base']}", f"round1={runs['round1']}", "--out", str(out), "--no-plot"])
    printed = capsys.readouterr().out
    warnings = [line for line in out.read_text().splitlines() if "answers truncated" in line]
    assert warnings == [
        "**Warning: baseline, math500_verbal: 5.0 % answers truncated** (more than 1 %): they used the "
        "whole max_gen_toks budget without stopping and score 0; raise max_gen_toks (eval_tasks/README.md)."
    ]
    assert warnings[0] in printed


def test_report_cli(runs, tmp_path, capsys):
    out = tmp_path / "r.md"
    main([str(runs["round1"]), "--out", str(out), "--no-plot"])
    printed = capsys.readouterr().out
    assert "| round1/merged | gsm8k_abscot | 200 | 90.0" in printed and "2 rows" in printed
    assert not out.with_suffix(".png").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.json", "no results file or folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no results_"),
        (lambda d: (d / "results_x.json").write_text("{}") and d / "results_x.json", "not an lm-eval results file"),
    ],
)
def test_report_errors(tmp_path, make, message, capsys):
    with pytest.raises(SystemExit):
        main([str(make(tmp_path)), "--out", str(tmp_path / "r.md")])
    assert message in capsys.readouterr().err
