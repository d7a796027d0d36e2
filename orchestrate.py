"""Run the T-round Abstract-CoT warm-up (and, with an ``rl:`` section, GRPO after it) from one YAML
run config, resumably.

    python orchestrate.py configs/runs/tiny.yml              # run (or resume) the whole pipeline
    python orchestrate.py configs/runs/tiny.yml --dry-run    # print the stage plan with commands
    python orchestrate.py RUN.yml --redo-stale               # redo stages whose inputs changed
    python orchestrate.py RUN.yml --machine-rank 1           # join the training (and trace) stages from node 1

Each stage (trace generation, ``axolotl`` training through ``accelerate launch``, LoRA merge,
lm-eval evaluation) is a subprocess with its own log under ``OUTPUT_DIR/logs``; ``OUTPUT_DIR/manifest.json``
records finished stages, so rerunning after a crash resumes at the first unfinished one.
See docs/orchestrate.md. Exit codes: 0 done, 1 a stage failed, 2 bad config, stale stages or a
run folder in use, 130/143 stopped by SIGINT/SIGTERM (the running stage's processes are stopped too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from abscot_plugin.core.fileio import write_atomic
from abscot_plugin.orchestration.checks import StageFailed
from abscot_plugin.orchestration.manifest import Manifest
from abscot_plugin.orchestration.plan import build_plan
from abscot_plugin.orchestration.run_config import ConfigError, PlanError, load_run_config
from abscot_plugin.orchestration.runner import (
    Interrupted,
    RunLocked,
    StaleStages,
    run_lock,
    run_plan,
    run_worker,
    stale_report,
)
from abscot_plugin.orchestration.summary import describe, report_path


def main(argv: list[str] | None = None) -> int:
    """Run, resume or describe a warm-up; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_config", help="YAML run config (see configs/runs/)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--redo-stale",
        action="store_true",
        help="redo finished stages whose inputs changed (old outputs go to OUTPUT_DIR/superseded)",
    )
    parser.add_argument(
        "--machine-rank",
        type=int,
        default=None,
        help="multi-node: this machine's rank (> 0 joins the training stages, and the trace "
        "stages when generation.num_nodes > rank)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.run_config)
        plan = build_plan(cfg, args.machine_rank)
        manifest = Manifest(cfg.output_dir / "manifest.json")
    except (ConfigError, PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe(plan, manifest))
        report = stale_report(plan, manifest)
        if report:
            print(f"stale: {report}")
        return 0
    try:
        if args.machine_rank:
            run_worker(plan, manifest.path, args.machine_rank)
            return 0
        with run_lock(cfg.output_dir):
            write_atomic(cfg.output_dir / "run_config.yml", Path(args.run_config).read_text(encoding="utf-8"))
            summary = run_plan(plan, manifest, args.redo_stale)
    except (StaleStages, RunLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"interrupted ({exc}); the running stage was stopped, rerun to resume", file=sys.stderr)
        return 128 + exc.signum
    print(f"warm-up model: {plan.final_model}\nsummary: {summary}\nplots: {cfg.output_dir / 'plots'}")
    if plan.rl_model:
        print(f"RL model: {plan.rl_model}")
    if report_path(plan).exists():
        print(f"evaluation: {report_path(plan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
