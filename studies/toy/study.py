"""The toy study (docs/toy_study.md): no-CoT vs verbal CoT vs Abstract-CoT per round on the S4
state-tracking task of :mod:`abscot_plugin.testing.toy`, with ablations, through the real pipeline.

    python studies/toy/study.py                          # every cell and seed (resumes; long on 2 cores)
    python studies/toy/study.py --seeds 0 --cells one_pass   # one seed of the main comparison
    python studies/toy/study.py --report-only --resummarize --publish docs/toy_study  # table and figure

Per seed: a random tiny Qwen3 (``python -m abscot_plugin.testing.toy model``), the verbal-CoT base model
and the no-CoT baseline trained from it with the same budget (``axolotl train
axolotl_configs/toy_sft.yml``), the ideal-trace reference (Phase B on oracle_traces.jsonl; skip
with ``--no-oracle``); per ablation cell, the T-round warm-up from the verbal base model
(``python orchestrate.py`` on ``configs/runs/toy.yml`` with the cell's changes). Every model (the
base models, the reference, each round's Phase B model) is evaluated on the held-out test split by the
project's evaluation, ``abscot_plugin.eval.eval_cli`` (lm-eval, the ``abscot-hf`` model class, the
tasks' decode and scorer), with the run config's ``evaluation`` settings.

Everything lands in ``--out`` (default ``build/toy_study``): ``results/*.json`` one file per
evaluated model (written as soon as it is measured, so a killed study loses nothing finished),
``eval/`` lm-eval's output, ``logs/`` one log per subprocess, ``report/`` the table
(``results.md``) and the figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # `python studies/toy/study.py` from anywhere: studies.toy.measure

from studies.toy.measure import summarize  # noqa: E402
from studies.toy.report import report  # noqa: E402

SFT_CONFIG = ROOT / "axolotl_configs" / "toy_sft.yml"
PHASE_B_CONFIG = ROOT / "axolotl_configs" / "toy_phase_b.yml"
RUN_CONFIG = ROOT / "configs" / "runs" / "toy.yml"
NUM_SYMBOLS = 64  # abscot_num_symbols of axolotl_configs/toy_phase_{a,b}.yml


def _mmin_off(cfg: dict) -> None:
    cfg["generation"]["m_min"] = 1
    cfg["evaluation"]["gen_kwargs"]["m_min"] = 1


def _mean_init(cfg: dict) -> None:
    cfg["training"].setdefault("overrides", {})["abscot_init"] = "mean"


def _split(cfg: dict) -> None:
    # two rows per input row: twice the rows per step keeps the steps, the epochs and the labels per step
    micro_batch = yaml.safe_load((ROOT / cfg["phase_a"]["config"]).read_text(encoding="utf-8"))["micro_batch_size"]
    cfg["phase_a"].setdefault("overrides", {}).update(abscot_phase_a_layout="split", micro_batch_size=2 * micro_batch)


# ablation cells: a change of the run config (configs/runs/toy.yml) each; titles in studies.toy.report
CELLS: dict[str, Callable[[dict], None] | None] = {
    "one_pass": None,  # the method as abscot implements it
    "m_min_off": _mmin_off,  # (b) no floor on the trace length (traces and evaluation)
    "mean_init": _mean_init,  # (d) new rows initialised to the mean embedding instead of random
    "split": _split,  # (a) Phase A as [x; c; z] and [x; z; y], two rows: nothing of c reaches y
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, data: Any) -> None:
    """Write atomically (a killed study never leaves half a result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class Study:
    """Paths, settings and the steps of the study; each step is skipped when its output exists."""

    def __init__(self, args: argparse.Namespace):
        self.out = Path(args.out).absolute()
        self.args = args
        self.run_template = yaml.safe_load(RUN_CONFIG.read_text(encoding="utf-8"))
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **{k: str(v) for k, v in self.run_template["env"].items()},
            "AXOLOTL_DO_NOT_TRACK": "1",
        }

    def run(self, name: str, cmd: list) -> float:
        """Run ``cmd`` from the repository root, output to ``logs/<name>.log``; returns seconds."""
        path = self.out / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"{name}: {' '.join(map(str, cmd))}")
        start = time.time()
        with open(path, "w", encoding="utf-8") as fh:
            code = subprocess.run(
                [str(c) for c in cmd], cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT
            ).returncode
        if code:
            tail = path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise SystemExit(f"{name} failed (exit {code}); log {path}:\n{tail}")
        return time.time() - start

    def data_dir(self) -> Path:
        return self.out / "data"

    def init_dir(self, seed: int) -> Path:
        return self.out / "init" / f"s{seed}"

    def base_dir(self, kind: str, seed: int) -> Path:
        return self.out / "base" / f"{kind}_s{seed}"

    def run_dir(self, cell: str, seed: int) -> Path:
        return self.out / "runs" / f"{cell}_s{seed}"

    def prepare(self, seed: int) -> None:
        """The seed's random model and (once, with seed 0's tokenizer: every seed's tokenizer is
        the same, only the weights differ) the task's data files."""
        init = self.init_dir(seed)
        if not (init / "config.json").exists():
            self.run(
                f"init_s{seed}",
                [
                    sys.executable,
                    "-m",
                    "abscot_plugin.testing.toy",
                    "model",
                    init,
                    "--layers",
                    self.args.layers,
                    "--seed",
                    seed,
                ],
            )
        data = self.data_dir()
        if not (data / "nocot.jsonl").exists():
            self.run(
                "data",
                [
                    sys.executable,
                    "-m",
                    "abscot_plugin.testing.toy",
                    "data",
                    data,
                    "--k",
                    self.args.k,
                    "--train",
                    self.args.train_rows,
                    "--tokenizer",
                    init,
                ],
            )

    def train_base(self, kind: str, seed: int) -> Path:
        """``axolotl train`` of the verbal-CoT (``verbal``) or no-CoT (``nocot``) base model:
        axolotl_configs/toy_sft.yml with this seed's folders."""
        out = self.base_dir(kind, seed)
        if (out / ".done").exists():
            return out
        cfg = yaml.safe_load(SFT_CONFIG.read_text(encoding="utf-8"))
        cfg.update(
            base_model=str(self.init_dir(seed)),
            output_dir=str(out),
            seed=seed,
            dataset_prepared_path=str(self.out / "prepared" / kind),
        )
        cfg["datasets"][0]["path"] = str(self.data_dir() / f"{kind}.jsonl")
        return self.train(f"base_{kind}_s{seed}", cfg, self.out / "base" / f"{kind}_s{seed}.yml")

    def train_oracle(self, seed: int) -> Path:
        """Phase B alone (``axolotl train axolotl_configs/toy_phase_b.yml``) from the verbal base
        model on the ideal traces (oracle_traces.jsonl), with the base models' step budget: what
        an abstract trace that names each intermediate state gives this model."""
        out = self.out / "oracle" / f"s{seed}"
        if (out / ".done").exists():
            return out
        cfg = yaml.safe_load(PHASE_B_CONFIG.read_text(encoding="utf-8"))
        steps = yaml.safe_load(SFT_CONFIG.read_text(encoding="utf-8"))["max_steps"]
        cfg.update(
            base_model=str(self.base_dir("verbal", seed)),
            output_dir=str(out),
            seed=seed,
            max_steps=steps,
            abscot_trace_file=str(self.data_dir() / "oracle_traces.jsonl"),
            dataset_prepared_path=str(self.out / "prepared" / "oracle"),
        )
        cfg["datasets"][0]["path"] = str(self.data_dir() / "dolci.jsonl")
        return self.train(f"oracle_s{seed}", cfg, self.out / "oracle" / f"s{seed}.yml")

    def train(self, name: str, cfg: dict, path: Path) -> Path:
        """``axolotl train`` of the axolotl config ``cfg``, written to ``path``; its ``output_dir`` is
        marked ``.done`` (with the seconds it took) so that a rerun skips it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        seconds = self.run(name, [Path(sys.executable).parent / "axolotl", "train", path])
        out = Path(cfg["output_dir"])
        write_json(out / ".done", {"seconds": seconds})
        return out

    def cell_config(self, cell: str) -> dict:
        """configs/runs/toy.yml with the cell's change."""
        cfg = copy.deepcopy(self.run_template)
        if CELLS[cell] is not None:
            CELLS[cell](cfg)
        return cfg

    def run_config(self, cell: str, seed: int) -> Path:
        """The cell's run config for one seed, without its evaluation section (the study
        evaluates every round itself, with the same settings)."""
        cfg = self.cell_config(cell)
        cfg.update(
            output_dir=str(self.run_dir(cell, seed)),
            base_model=str(self.base_dir("verbal", seed)),
            rounds=self.args.rounds,
        )
        cfg["data"]["path"] = str(self.data_dir() / "dolci.jsonl")
        cfg["training"].setdefault("overrides", {})["seed"] = seed
        cfg["generation"]["seed"] = seed
        cfg.pop("evaluation")
        path = self.out / "runs" / f"{cell}_s{seed}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        return path

    def warm_up(self, cell: str, seed: int) -> float:
        """The cell's T-round warm-up through orchestrate.py (it resumes by itself)."""
        return self.run(f"warmup_{cell}_s{seed}", [sys.executable, "orchestrate.py", self.run_config(cell, seed)])

    def measure(self, name: str, model: Path, task: str, cell: str, extra: dict) -> None:
        """Evaluate ``model`` on ``--split`` with ``abscot_plugin.eval.eval_cli`` (the cell's run-config
        ``evaluation`` settings, trace seed = the seed); saved as ``results/<name>.json``."""
        from abscot_plugin.eval.eval_cli import lm_eval_command

        path = self.out / "results" / f"{name}.json"
        if path.exists():
            return
        ev = self.cell_config(cell)["evaluation"]
        gen_kwargs = {**ev["gen_kwargs"], "trace_seed": extra["seed"]}
        out = self.out / "eval" / name
        shutil.rmtree(out, ignore_errors=True)
        split = self.data_dir() / f"{self.args.split}.jsonl"
        cmd = lm_eval_command(
            model,
            [task],
            out,
            data_overrides={"math500_file": str(split)},
            gen_kwargs=gen_kwargs,
            batch_size=ev["batch_size"],
        )
        seconds = self.run(f"eval_{name}", cmd)
        result = {
            "cell": cell,
            **extra,
            "model": str(model),
            "task": task,
            "gen_kwargs": gen_kwargs,
            "seconds": seconds,
            **summarize(out, task, NUM_SYMBOLS, gen_kwargs["m_max"], oracle=extra.get("cell") == "oracle"),
        }
        write_json(path, result)
        log(f"{name}: accuracy {result['accuracy']:.3f}, tokens {result['total_tokens']:.1f}")

    def resummarize(self) -> None:
        """Recompute every ``results/*.json`` from its kept lm-eval output (``eval/<name>``), e.g.
        after :mod:`studies.toy.measure` gained a statistic; the evaluation is not rerun."""
        from studies.toy.measure import summarize

        for path in sorted((self.out / "results").glob("*.json")):
            result = json.loads(path.read_text(encoding="utf-8"))
            result.update(
                summarize(
                    self.out / "eval" / path.stem,
                    result["task"],
                    NUM_SYMBOLS,
                    result["gen_kwargs"]["m_max"],
                    oracle=result["cell"] == "oracle",
                )
            )
            write_json(path, result)

    def measure_round(self, cell: str, seed: int, t: int) -> None:
        self.measure(
            f"{cell}_s{seed}_r{t}",
            self.run_dir(cell, seed) / f"round{t}" / "phase_b" / "train",
            "math500_abscot",
            cell,
            {"seed": seed, "round": t},
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "toy_study"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"of {list(CELLS)}")
    parser.add_argument("--rounds", type=int, default=None, help="T (default: configs/runs/toy.yml's)")
    parser.add_argument("--k", type=int, default=8, help="swaps per problem")
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--split",
        choices=["test", "valid"],
        default="test",
        help="the evaluation split (valid: for design choices, never tuned on test)",
    )
    parser.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the ideal-trace reference")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--resummarize",
        action="store_true",
        help="with --report-only: first recompute results/*.json from the kept lm-eval outputs",
    )
    parser.add_argument("--publish", type=Path, default=None, help="also copy the report to this folder")
    args = parser.parse_args(argv)
    study = Study(args)
    args.rounds = args.rounds or study.run_template["rounds"]
    cells = args.cells.split(",")
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        parser.error(f"unknown cells {unknown}; known: {list(CELLS)}")
    if not args.report_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            study.prepare(seed)
            for kind in ("nocot", "verbal"):
                study.measure(
                    f"{kind}_s{seed}",
                    study.train_base(kind, seed),
                    "math500_verbal",
                    "one_pass",
                    {"seed": seed, "cell": kind},
                )
            if args.oracle:
                study.measure(
                    f"oracle_s{seed}",
                    study.train_oracle(seed),
                    "math500_abscot",
                    "one_pass",
                    {"seed": seed, "cell": "oracle"},
                )
        for cell in cells:
            for seed in seeds:
                study.warm_up(cell, seed)
                for t in range(1, args.rounds + 1):
                    study.measure_round(cell, seed, t)
    elif args.resummarize:
        study.resummarize()
    report(study.out, args.publish)


if __name__ == "__main__":
    main()
