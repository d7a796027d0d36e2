"""orchestrate.py's RL stage (run config section ``rl``): validation, the planned stages
(rl_train -> rl_merge -> rl_eval after the warm-up), their YAML and fingerprints, the GRPO step
count against TRL's own sampler and config, and the checks and summary of a GRPO training stage.
The GRPO template here is tests/grpo_minimal.yml, the shape of axolotl_configs/tiny_grpo.yml."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from support import ROOT
from test_orchestrate import orchestrate, run_config, write_config

from abscot_plugin.orchestration.checks import StageFailed, check_training
from abscot_plugin.orchestration.curves import Curve, ScheduleError, check_constant
from abscot_plugin.orchestration.manifest import Manifest
from abscot_plugin.orchestration.plan import build_plan
from abscot_plugin.orchestration.run_config import PlanError, load_run_config
from abscot_plugin.orchestration.schedule import GRPOSchedule
from abscot_plugin.orchestration.slices import write_slice
from abscot_plugin.orchestration.summary import describe, eval_label, write_summary
from abscot_plugin.rl.judge import CONFIG_ENV, JUDGE_REWARD

GRPO = ROOT / "tests" / "grpo_minimal.yml"
MATH500 = ROOT / "abscot_plugin" / "data" / "math500_tiny.jsonl"
GSM8K = ROOT / "abscot_plugin" / "data" / "gsm8k_tiny.jsonl"


def rl_config(tmp_path: Path, rl: dict | None = None, **changes) -> dict:
    """The small T=2 run config of test_orchestrate with an ``rl`` section (``rl`` merged in)."""
    section = {"config": str(GRPO), "data": str(MATH500), "num_rows": 16, **(rl or {})}
    evaluation = {"tasks": ["math500_abscot"], **changes.pop("evaluation", {})}
    return run_config(tmp_path, "Qwen/Qwen3-4B", rl=section, evaluation=evaluation, **changes)


def rl_plan(tmp_path: Path, rl: dict | None = None, **changes):
    return build_plan(load_run_config(write_config(tmp_path, rl_config(tmp_path, rl, **changes))))


@pytest.mark.parametrize(
    "rl, message",
    [
        ({"config": "nope.yml"}, "rl.config: RL config not found: nope.yml"),
        ({"data": "/nonexistent/rl.jsonl"}, "rl.data: RL data file not found: /nonexistent/rl.jsonl"),
        ({"num_rows": 0}, "rl.num_rows: Input should be greater than or equal to 1"),
        ({"beta": 0.04}, "rl.beta: unknown key"),
        ({"overrides": {"base_model": "x"}}, "rl.overrides sets ['base_model'], which the orchestrator sets"),
        ({"judge": str(GRPO)}, "rl.judge: judge settings " + str(GRPO) + ": url: Field required"),
    ],
)
def test_bad_rl_section_is_one_line(tmp_path, capsys, rl, message):
    path = write_config(tmp_path, rl_config(tmp_path, rl))
    assert orchestrate.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and message in err


def test_rl_plan_errors(tmp_path):
    rows = tmp_path / "rl.jsonl"
    rows.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2?"}) + "\n")
    with pytest.raises(PlanError, match=r"rl.jsonl: RL prompts row 1: no gold answer"):
        rl_plan(tmp_path, {"data": str(rows), "num_rows": None})
    rows.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(PlanError, match=r"rl.jsonl: RL prompts row 0: needs 'problem' \(MATH\) or 'question'"):
        rl_plan(tmp_path, {"data": str(rows), "num_rows": None})
    rows.write_text(json.dumps({"problem": "1+1?", "answer": "\\frac{"}) + "\n")  # the plan reads gold as training
    with pytest.raises(PlanError, match=r"rl.jsonl: RL prompts row 0: math-verify reads no mathematical object"):
        rl_plan(tmp_path, {"data": str(rows), "num_rows": None})
    with pytest.raises(PlanError, match="math500_tiny.jsonl has 20 rows; rl.num_rows is 21"):
        rl_plan(tmp_path, {"num_rows": 21})
    schedulers = r"\['cosine', 'constant', 'constant_with_warmup'\]"
    with pytest.raises(PlanError, match=r"grpo_minimal.yml: lr_scheduler is 'linear'.*" + schedulers):
        rl_plan(tmp_path, {"overrides": {"lr_scheduler": "linear"}})
    with pytest.raises(PlanError, match="grpo_minimal.yml: set learning_rate"):
        rl_plan(tmp_path, {"overrides": {"lr_scheduler": "constant", "learning_rate": None}})
    with pytest.raises(PlanError, match=r"grpo_minimal.yml: .*unknown abscot key\(s\) \['abscot_m_maxx'\]"):
        rl_plan(tmp_path, {"overrides": {"abscot_m_maxx": 16}})
    sft = tmp_path / "sft.yml"
    sft.write_text(yaml.safe_dump({**yaml.safe_load(GRPO.read_text()), "rl": None}))
    with pytest.raises(PlanError, match="sft.yml: rl is None; the RL stage runs GRPO"):
        rl_plan(tmp_path, {"config": str(sft)})
    with pytest.raises(PlanError, match="generation_batch_size 12 is not a multiple of trl.num_generations 8"):
        rl_plan(tmp_path, {"overrides": {"trl": {"num_generations": 8, "generation_batch_size": 12}}})


def test_rl_stages_commands_and_yaml(tmp_path):
    plan = rl_plan(tmp_path, evaluation={"data_files": {"math500_file": str(MATH500)}})
    run = tmp_path / "run"
    names = [s.name for s in plan.stages]
    assert names[-5:] == ["r2_b_merge", "eval", "rl_train", "rl_merge", "rl_eval"]
    train, merge, ev = plan.stage("rl_train"), plan.stage("rl_merge"), plan.stage("rl_eval")
    warmup = str(run / "round2" / "phase_b" / "model")
    assert str(plan.final_model) == warmup and plan.rl_model == run / "rl" / "model"
    # the GRPO template with the managed keys set; training.overrides (the warm-up's) do not apply
    assert train.yaml["base_model"] == warmup and train.yaml["rl"] == "grpo"
    assert train.yaml["datasets"] == [
        {"path": str(run / "data" / "rl.jsonl"), "ds_type": "json", "type": "abscot_plugin.rl_prompts"}
    ]
    assert train.yaml["output_dir"] == str(run / "rl" / "train") and train.yaml["use_tensorboard"]
    assert train.yaml["dataset_prepared_path"] == str(run / "prepared" / "rl")
    assert "max_steps" not in train.yaml and train.yaml["trl"]["num_generations"] == 4
    assert train.yaml_path == run / "rl" / "axolotl.yml" and train.upstream == ["r2_b_merge"]
    assert train.command[-2:] == ["axolotl.cli.train", str(run / "rl" / "axolotl.yml")]
    # the prompt slice: the first rl.num_rows rows of rl.data
    piece = plan.slices[run / "data" / "rl.jsonl"]
    write_slice(piece)
    assert piece.rows == 16 and piece.path.read_text().splitlines() == MATH500.read_text().splitlines()[:16]
    # merge onto the warm-up model; the RL model evaluated like the warm-up model, into eval/rl
    assert merge.command[merge.command.index("--base") + 1] == warmup and merge.upstream == ["rl_train"]
    assert merge.command[3:5] == [str(run / "rl" / "train"), str(run / "rl" / "model")]
    final = plan.stage("eval").command
    assert ev.upstream == ["rl_merge"] and ev.command[ev.command.index("--output_path") + 1] == str(run / "eval" / "rl")
    swap = {str(run / "eval" / "final"): str(run / "eval" / "rl"), warmup: str(run / "rl" / "model")}
    assert [swap[a] if a in swap else a.replace(warmup, swap[warmup]) for a in final] == ev.command
    assert eval_label(plan, "rl_eval") == "warm-up + RL model, T 2"
    # 16 prompts, 2 per generation batch (micro 4 × accumulation 2 / 4 generations), one step each
    assert (train.schedule.steps, train.schedule.batch, train.schedule.warmup) == (8, 8, 2)
    listing = describe(plan, Manifest(tmp_path / "manifest.json"))
    assert f"RL model: {run / 'rl' / 'model'}" in listing
    assert "[13] rl_train" in listing and "[15] rl_eval" in listing and len(names) == 15
    assert "8 optimizer steps, warm-up 2 (16 prompts // 2 per generation batch" in listing


def test_rl_yaml_gets_the_run_trace_settings(tmp_path):
    """The RL YAML's abscot_m_max is generation.m_max (another value stated is refused, naming
    both), its abscot_rl_m_min generation.m_min unless it sets one (at most m_max); the RL model's
    evaluation decodes with the run's trace settings as the warm-up model's does."""
    plan = rl_plan(tmp_path)
    train = plan.stage("rl_train")
    assert (train.yaml["abscot_m_max"], train.yaml["abscot_rl_m_min"]) == (6, 2)  # generation's m_max, m_min
    ev = plan.stage("rl_eval").command
    assert ev[ev.index("--gen_kwargs") + 1].startswith("m_min=2,m_max=6,trace_temperature=0.7,")
    own = rl_plan(tmp_path, {"overrides": {"abscot_rl_m_min": 3, "abscot_m_max": 6}})
    assert (own.stage("rl_train").yaml["abscot_m_max"], own.stage("rl_train").yaml["abscot_rl_m_min"]) == (6, 3)
    with pytest.raises(PlanError, match=r"^abscot_m_max 16 \(rl.overrides.abscot_m_max\) is not generation.m_max 6"):
        rl_plan(tmp_path, {"overrides": {"abscot_m_max": 16}})
    with pytest.raises(
        PlanError, match=r"^abscot_rl_m_min 7 \(rl.overrides.abscot_rl_m_min\) > generation.m_max 6 \(the RL YAML's"
    ):
        rl_plan(tmp_path, {"overrides": {"abscot_rl_m_min": 7}})


def test_rl_variants(tmp_path):
    """Full fine-tuning: no merge, the RL model is the trainer's folder; rl.tasks; GSM8K rows; no rl."""
    plan = rl_plan(
        tmp_path, {"overrides": {"adapter": None}, "tasks": ["gsm8k_abscot"], "data": str(GSM8K), "num_rows": None}
    )
    assert [s.name for s in plan.stages][-3:] == ["eval", "rl_train", "rl_eval"]
    assert plan.rl_model == tmp_path / "run" / "rl" / "train"
    ev = plan.stage("rl_eval").command
    assert ev[ev.index("--tasks") + 1] == "gsm8k_abscot"
    assert ev[ev.index("--model_args") + 1].startswith(f"pretrained={plan.rl_model}")
    rows = len(GSM8K.read_text().splitlines())
    assert plan.stage("rl_train").schedule.rows == rows
    no_tasks = rl_plan(tmp_path, {"tasks": []})
    assert [s.name for s in no_tasks.stages][-2:] == ["rl_train", "rl_merge"]
    without = build_plan(load_run_config(write_config(tmp_path, run_config(tmp_path, "Qwen/Qwen3-4B"))))
    assert without.rl_model is None and not [s for s in without.stages if s.name.startswith("rl_")]


def test_judge_reward_wiring(tmp_path):
    """rl.judge (the judge's settings) and the GRPO YAML's judge reward go together; the training
    stage gets $ABSCOT_JUDGE_CONFIG, and its fingerprint follows the settings and the rubric."""
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Grade {response} for {problem} (reference {reference}). End with Score: N.")
    settings = tmp_path / "judge.yml"
    settings.write_text(yaml.safe_dump({"url": "http://127.0.0.1:8001/v1", "model": "judge", "rubric": str(rubric)}))
    rewards = {"overrides": {"trl": {"num_generations": 4, "reward_funcs": [JUDGE_REWARD]}}}
    with pytest.raises(PlanError, match="names abscot_plugin.rl.judge.judge, and rl.judge .* is not set: set both"):
        rl_plan(tmp_path, rewards)
    with pytest.raises(PlanError, match="does not name abscot_plugin.rl.judge.judge, and rl.judge .* is set: set both"):
        rl_plan(tmp_path, {"judge": str(settings)})
    plan = rl_plan(tmp_path, {**rewards, "judge": str(settings)})
    train = plan.stage("rl_train")
    assert train.env[CONFIG_ENV] == str(settings) and train.yaml["trl"]["reward_funcs"] == [JUDGE_REWARD]
    assert CONFIG_ENV not in plan.stage("r2_b_train").env
    rubric.write_text(rubric.read_text() + " Be strict.")
    changed = rl_plan(tmp_path, {**rewards, "judge": str(settings)})
    assert changed.stage("rl_train").fingerprint != train.fingerprint
    assert changed.stage("r2_b_merge").fingerprint == plan.stage("r2_b_merge").fingerprint


def test_rl_fingerprints(tmp_path):
    """The RL stages' fingerprints follow their settings and everything upstream; the warm-up's
    do not depend on the RL section."""
    base = rl_plan(tmp_path)
    warmup = {s.name: s.fingerprint for s in base.stages if not s.name.startswith("rl_")}
    rl = {s.name: s.fingerprint for s in base.stages if s.name.startswith("rl_")}

    def changed(plan) -> set[str]:
        return {s.name for s in plan.stages if s.name.startswith("rl_") and s.fingerprint != rl[s.name]}

    for variant in (
        {"overrides": {"learning_rate": 2e-6}},
        {"num_rows": 8},
        {"overrides": {"trl": {"num_generations": 2, "beta": 0.0}}},
    ):
        plan = rl_plan(tmp_path, variant)
        assert changed(plan) == set(rl), variant
        assert {s.name: s.fingerprint for s in plan.stages if not s.name.startswith("rl_")} == warmup
    upstream = rl_plan(tmp_path, phase_b={"overrides": {"learning_rate": 3e-5}})
    assert changed(upstream) == set(rl)
    tasks = rl_plan(tmp_path, {"tasks": ["gsm8k_abscot"]})
    assert changed(tasks) == {"rl_eval"}
    assert rl_plan(tmp_path).stage("rl_eval").fingerprint == rl["rl_eval"]  # stable


@pytest.mark.slow  # importing TRL takes ~25 s on this machine
@pytest.mark.parametrize(
    "yaml_cfg, rows, processes",
    [
        ({"micro_batch_size": 4, "gradient_accumulation_steps": 2, "trl": {"num_generations": 4}}, 16, 1),
        ({"micro_batch_size": 4, "gradient_accumulation_steps": 2, "trl": {"num_generations": 4}}, 17, 1),
        (
            {
                "micro_batch_size": 2,
                "gradient_accumulation_steps": 4,
                "trl": {"num_generations": 8, "generation_batch_size": 32, "num_iterations": 2},
            },
            50,
            2,
        ),
        ({"micro_batch_size": 8, "gradient_accumulation_steps": 1, "num_epochs": 3, "trl": {}}, 30, 1),
        ({"micro_batch_size": 1, "gradient_accumulation_steps": 16, "trl": {"num_generations": 8}}, 1000, 4),
    ],
)
def test_grpo_steps_follow_trl(yaml_cfg, rows, processes, tmp_path):
    """GRPOSchedule's optimizer steps are TRL 1.9's: GRPOConfig derives the generation batch, TRL's
    RepeatSampler gives the sampler length, the dataloader batches per_device × steps_per_generation
    per process, and transformers 5 makes ceil(epochs × ceil(len / accumulation)) steps."""
    from trl import GRPOConfig
    from trl.trainer.utils import RepeatSampler

    schedule = GRPOSchedule.of(yaml_cfg, rows, processes)
    trl = yaml_cfg["trl"]
    config = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=yaml_cfg["micro_batch_size"],
        gradient_accumulation_steps=yaml_cfg["gradient_accumulation_steps"],
        use_cpu=True,
        report_to=[],
        **{k: trl[k] for k in ("num_generations", "generation_batch_size", "num_iterations") if k in trl},
    )
    if processes > 1:  # GRPOConfig derives the generation batch for this process count
        config.generation_batch_size = trl.get("generation_batch_size") or (
            config.per_device_train_batch_size * processes * config.gradient_accumulation_steps
        )
        config.steps_per_generation = config.generation_batch_size // (config.per_device_train_batch_size * processes)
    sampler = RepeatSampler(
        list(range(rows)),
        mini_repeat_count=config.num_generations,
        batch_size=config.generation_batch_size // config.num_generations,
        repeat_count=config.num_iterations * config.steps_per_generation,
    )
    per_process = len(sampler) // processes
    dataloader = math.ceil(per_process / (config.per_device_train_batch_size * config.steps_per_generation))
    per_epoch = max(math.ceil(dataloader / config.gradient_accumulation_steps), 1)
    assert schedule.steps == math.ceil(yaml_cfg.get("num_epochs", 1) * per_epoch)
    assert schedule.num_generations == config.num_generations
    assert schedule.batch == config.per_device_train_batch_size * config.gradient_accumulation_steps * processes


def test_grpo_training_check_reads_rewards(tmp_path):
    """A GRPO training stage's check: its steps against the GRPO schedule, the learning rate as
    warm-up + cosine, and TRL's reward and KL curves as metrics, with a reward plot in SUMMARY.md."""
    from torch.utils.tensorboard import SummaryWriter

    plan = rl_plan(tmp_path)
    stage = plan.stage("rl_train")
    assert stage.schedule.steps == 8
    train_dir = stage.outputs[0]
    train_dir.mkdir(parents=True)
    (train_dir / "adapter_config.json").write_text("{}")
    with SummaryWriter(str(train_dir / "runs" / "run0")) as writer:
        for step in range(1, 9):
            lr = 1e-5 * (step / 2 if step <= 2 else 0.5 * (1 + math.cos(math.pi * (step - 2) / 6)))
            writer.add_scalar("train/learning_rate", lr, step)
            writer.add_scalar("train/loss", 0.1 / step, step)
            writer.add_scalar("train/reward", 0.1 * step, step)
            writer.add_scalar("train/rewards/judge/mean", 0.05 * step, step)
            writer.add_scalar("train/kl", 0.0 if step == 1 else 0.01 * step, step)
        writer.add_scalar("train/train_runtime", 12.0, 8)
    metrics = check_training(plan, stage)
    assert metrics["steps"] == metrics["steps_planned"] == 8
    assert (metrics["reward first"], metrics["reward last"]) == (0.1, 0.8)
    assert (metrics["rewards/judge/mean first"], metrics["kl first"]) == (0.05, 0.0)
    assert (plan.run_dir / "plots" / "rl_train_reward.png").exists()
    manifest = Manifest(plan.run_dir / "manifest.json")
    manifest.record("rl_train", stage.fingerprint, stage.inputs, [str(train_dir)], 0.0, str(stage.log), metrics)
    summary = write_summary(plan, manifest).read_text()
    assert "![rl_train reward](plots/rl_train_reward.png)" in summary
    assert f"- RL model (GRPO from the warm-up model, `grpo_minimal.yml`): `{plan.rl_model}`" in summary
    assert "| rl_train | done |" in summary and "8 steps, warm-up 2, batch 8 (2 prompts × 4)" in summary


def test_constant_schedule_check(tmp_path):
    """A constant learning rate (tiny_grpo.yml's: max_steps, no warm-up) is checked against the
    configured rate; a curve that moves fails the stage."""
    from torch.utils.tensorboard import SummaryWriter

    plan = rl_plan(tmp_path, {"overrides": {"lr_scheduler": "constant", "max_steps": 3, "learning_rate": 1e-3}})
    stage = plan.stage("rl_train")
    assert (stage.schedule.steps, stage.schedule.warmup) == (3, 0)
    train_dir = stage.outputs[0]
    train_dir.mkdir(parents=True)
    (train_dir / "adapter_config.json").write_text("{}")
    for run, lrs in (("run0", [1e-3] * 3), ("run1", [1e-3, 5e-4, 1e-3])):
        with SummaryWriter(str(train_dir / "runs" / run)) as writer:
            for step, lr in enumerate(lrs, 1):
                writer.add_scalar("train/learning_rate", lr, step)
                writer.add_scalar("train/loss", 1.0, step)
            writer.add_scalar("train/train_runtime", 1.0, 3)
        if run == "run0":
            assert check_training(plan, stage)["steps"] == 3
    with pytest.raises(StageFailed, match="learning rate 0.0005 at step 2; the configured constant is 0.001"):
        check_training(plan, stage)
    # with a warm-up (qwen3_4b_grpo_*.yml): a rise over the warm-up steps, then the constant
    check_constant(Curve([1, 2, 3, 4, 5], [0.0, 5e-4, 1e-3, 1e-3, 1e-3]), 1e-3, warmup=2)
    with pytest.raises(ScheduleError, match="0.0005 at step 4; the configured constant is 0.001"):
        check_constant(Curve([1, 2, 3, 4, 5], [0.0, 5e-4, 1e-3, 5e-4, 1e-3]), 1e-3, warmup=2)
    with pytest.raises(ScheduleError, match="0.002 at step 2 of the warm-up to 0.001 is not rising"):
        check_constant(Curve([1, 2, 3], [5e-4, 2e-3, 1e-3]), 1e-3, warmup=2)
    warm = rl_plan(tmp_path, {"overrides": {"lr_scheduler": "constant_with_warmup", "warmup_steps": 10}})
    assert warm.stage("rl_train").schedule.warmup == 10


def test_dry_run_lists_the_rl_stages(tmp_path):
    """Through the command line, from the repository root: the RL stages, their YAML and schedule."""
    import subprocess

    from support import offline_env

    path = write_config(tmp_path, rl_config(tmp_path))
    proc = subprocess.run(
        [sys.executable, "orchestrate.py", str(path), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=offline_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in (
        "rl_train     todo",
        "rl_merge     todo",
        "rl_eval      todo",
        f"config: {tmp_path / 'run' / 'rl' / 'axolotl.yml'}",
        "schedule: 8 optimizer steps",
    ):
        assert line in proc.stdout, line


def test_shipped_rl_run_config_plans(tmp_path, tiny_dir):
    """configs/runs/tiny_rl.yml with the GRPO YAML it names: a valid plan ending in the RL stages."""
    cfg = yaml.safe_load((ROOT / "configs" / "runs" / "tiny_rl.yml").read_text())
    cfg.update(output_dir=str(tmp_path / "run"), base_model=str(tiny_dir))
    plan = build_plan(load_run_config(write_config(tmp_path, cfg)))
    assert [s.name for s in plan.stages][-4:] == ["eval", "rl_train", "rl_merge", "rl_eval"]
    train = plan.stage("rl_train")
    assert train.yaml["rl"] == "grpo" and train.yaml["base_model"] == str(plan.final_model)
    assert train.schedule.steps == train.yaml["max_steps"]
