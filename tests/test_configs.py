"""Every shipped axolotl YAML passes axolotl's own config validation (paths pointed at the tiny
fixture), and misconfigurations fail at validation with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO

# the plugin's configs (toy_sft.yml trains the toy task's base models without it: validated alone)
CONFIGS = sorted(p for p in (REPO / "axolotl_configs").glob("*.yml") if p.name != "toy_sft.yml")
ZERO3_JSON = REPO / "axolotl_configs" / "deepspeed" / "zero3_bf16.json"
GPU = (
    {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 2, "compute_capability": "sm_90"},
    {"torch_version": "2.13.0"},
)


def localise(raw: dict, tiny_dir: Path, tmp: Path) -> dict:
    """Point a config's model, data, trace and output paths at local test files."""
    from abscot_plugin.testing.fixtures import data_path

    cfg = dict(raw)
    cfg["base_model"] = str(tiny_dir)
    cfg["datasets"] = [
        {"path": str(data_path("dolci_tiny.jsonl")), "ds_type": "json", "type": d["type"]} for d in raw["datasets"]
    ]
    cfg["output_dir"] = str(tmp / "out")
    cfg["dataset_prepared_path"] = str(tmp / "prepared")
    if "abscot_trace_file" in cfg:
        traces = tmp / "traces.jsonl"
        traces.write_text(json.dumps({"id": "dolci-tiny-000", "trace": "<TOKEN_A>"}) + "\n")
        cfg["abscot_trace_file"] = str(traces)
    return cfg


def validate(cfg: dict, capabilities=GPU):
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault(cfg)
    prepare_plugins(cfg)
    return validate_config(cfg, *capabilities)


def test_toy_base_model_config_validates(tiny_dir, tmp_path):
    """toy_sft.yml (no plugin: plain SFT of the toy task's base models) passes axolotl's validation."""
    raw = yaml.safe_load((REPO / "axolotl_configs" / "toy_sft.yml").read_text())
    assert "plugins" not in raw and raw["datasets"][0]["type"] == "input_output"
    cfg = validate(localise(raw, tiny_dir, tmp_path), (None, None))
    assert cfg.max_steps == raw["max_steps"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path, tiny_dir, tmp_path):
    raw = yaml.safe_load(path.read_text())
    assert "abscot_plugin.AbsCoTPlugin" in raw["plugins"]
    capabilities = None if path.name.startswith(("tiny", "toy")) else GPU  # the CPU configs
    cfg = validate(localise(raw, tiny_dir, tmp_path), capabilities or (None, None))
    # the toy task's configs set a shorter m_max (its traces are 8..32 symbols); the others the default
    assert cfg.abscot_num_symbols == 64 and cfg.abscot_m_max == (32 if path.name.startswith("toy") else 128)
    assert Path(cfg.tokenizer_config).name.startswith("abscot_tokenizer_")
    if "deepspeed" in raw:
        assert (REPO / raw["deepspeed"]).is_file()
        assert json.loads((REPO / raw["deepspeed"]).read_text())["zero_optimization"]["stage"] == 3
    if raw.get("adapter") == "lora" and path.name.startswith("qwen3_4b"):
        assert (cfg.lora_r, cfg.lora_alpha) == (32, 64)
    if any(d["type"] == "abscot_plugin.train.bottleneck" for d in raw["datasets"]):
        assert not cfg.sample_packing


@pytest.mark.parametrize("variant", ["lora", "full"])
def test_qwen3_4b_phases_share_one_batch_in_examples(variant):
    """Phase B unpacked, with Phase A's micro_batch_size × gradient_accumulation_steps: the same
    effective batch in examples (× the processes) in both phases."""
    a, b = (yaml.safe_load((REPO / "axolotl_configs" / f"qwen3_4b_phase_{p}_{variant}.yml").read_text()) for p in "ab")
    assert not a.get("sample_packing") and not b.get("sample_packing")
    batch = {name: cfg["micro_batch_size"] * cfg["gradient_accumulation_steps"] for name, cfg in (("a", a), ("b", b))}
    assert batch["a"] == batch["b"]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"sample_packing": True}, "sample_packing: false"),
        ({"attn_implementation": "flash_attention_2"}, "takes a custom mask"),
        ({"abscot_cot_keep": "middle"}, "abscot_cot_keep"),
        ({"abscot_num_symbol": 32}, "unknown abscot key"),
        (
            {"datasets": [{"path": "x.jsonl", "ds_type": "json", "type": "abscot_plugin.bottleneck"}]},
            "abscot_plugin.bottleneck is now abscot_plugin.train.bottleneck",
        ),
    ],
)
def test_bad_settings_fail_validation(change, message, tiny_dir, tmp_path):
    raw = yaml.safe_load((REPO / "axolotl_configs" / "tiny_phase_a.yml").read_text())
    cfg = localise(raw, tiny_dir, tmp_path)
    cfg.update(change)
    with pytest.raises(Exception, match=message):
        validate(cfg, (None, None))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"trainer_cls": None}, "rl: grpo needs trainer_cls: abscot_plugin.train.grpo_trainer.AbsCoTGRPOTrainer"),
        ({"trl": {"rollout_func": None}}, "rl: grpo needs trl.rollout_func: abscot_plugin.rl.rollout.rollout_func"),
        ({"trl": {"top_p": 0.9}}, "trl.top_p=0.9: the abscot rollout samples the full softmax"),
        ({"trl": {"top_k": 50}}, "trl.top_k=50"),
        ({"trl": {"use_vllm": True}}, "for vLLM rollouts set abscot_rollout_server"),
        ({"abscot_rollout_server": "127.0.0.1:8765"}, "abscot_rollout_server '127.0.0.1:8765': needs an http:// URL"),
        (
            {"abscot_rollout_server": "http://127.0.0.1:8765", "deepspeed": str(ZERO3_JSON)},
            "abscot_rollout_server: the weight sync does not merge LoRA under DeepSpeed ZeRO-3",
        ),
        (
            {"datasets": [{"path": "x.jsonl", "ds_type": "json", "type": "abscot_plugin.train.self_distill"}]},
            "rl: grpo datasets need type: abscot_plugin.rl_prompts",
        ),
        ({"abscot_rl_m_min": 200}, "abscot_rl_m_min 200 > abscot_m_max 128"),
        (
            {"trl": {"reward_funcs": ["abscot_plugin.rewards.math_reward"]}},
            "abscot_plugin.rewards.math_reward is now abscot_plugin.rl.rewards.math_reward",
        ),
    ],
)
def test_bad_grpo_settings_fail_validation(change, message, tiny_dir, tmp_path):
    raw = yaml.safe_load((REPO / "axolotl_configs" / "tiny_grpo.yml").read_text())
    cfg = localise(raw, tiny_dir, tmp_path)
    for key, value in change.items():
        if key == "trl":
            cfg["trl"] = {**cfg["trl"], **value}
        else:
            cfg[key] = value
    with pytest.raises(Exception, match=message):
        validate(cfg, (None, None))


def test_data_settings_change_the_prepared_dataset_fingerprint(tiny_dir, tmp_path):
    """axolotl's dataset cache hash ignores plugin keys; the tokenizer folder name carries them."""
    raw = yaml.safe_load((REPO / "axolotl_configs" / "tiny_phase_a.yml").read_text())
    a = validate(localise(raw, tiny_dir, tmp_path), (None, None)).tokenizer_config
    b = validate(localise(raw, tiny_dir, tmp_path), (None, None)).tokenizer_config
    raw["abscot_cot_keep"] = "start"
    c = validate(localise(raw, tiny_dir, tmp_path), (None, None)).tokenizer_config
    assert a == b != c


def test_every_setting_the_dataset_formats_read_changes_the_prepared_dataset_fingerprint():
    """Each abscot key the dataset strategy reads shapes the tokenised rows, so it must be in the
    fingerprint (the trace file is hashed by its bytes); e.g. a split Phase A must never be handed
    the one-pass rows a cache kept."""
    import inspect
    import re

    from abscot_plugin.tokens import tokenizer_prep
    from abscot_plugin.train import dataset_strategy

    read = set(re.findall(r"args\.(abscot_\w+)", inspect.getsource(dataset_strategy)))
    assert "abscot_phase_a_layout" in read and "abscot_trace_file" in read
    assert read - {"abscot_trace_file"} <= set(tokenizer_prep.DATA_KEYS)
    one_pass = {"abscot_num_symbols": 64, "abscot_phase_a_layout": "one_pass"}
    split = {**one_pass, "abscot_phase_a_layout": "split"}
    assert tokenizer_prep.data_fingerprint(one_pass, "base") != tokenizer_prep.data_fingerprint(split, "base")


def test_a_new_row_layout_changes_the_prepared_dataset_fingerprint(monkeypatch):
    """Code that tokenises rows differently bumps LAYOUT_VERSION: older prepared data is not reused."""
    from abscot_plugin.tokens import tokenizer_prep

    cfg = {"abscot_num_symbols": 64, "abscot_m_max": 128}
    before = tokenizer_prep.data_fingerprint(cfg, "base")
    monkeypatch.setattr(tokenizer_prep, "LAYOUT_VERSION", tokenizer_prep.LAYOUT_VERSION + 1)
    assert tokenizer_prep.data_fingerprint(cfg, "base") != before


def test_liger_plugin_next_to_abscot_validates(tiny_dir, tmp_path):
    """axolotl's Liger plugin and its Qwen3 kernels (RoPE, RMSNorm, SwiGLU, fused linear
    cross-entropy) with a Qwen3-4B Phase A config: accepted (the kernels are GPU-only; what they
    patch is checked in test_liger.py)."""
    raw = yaml.safe_load((REPO / "axolotl_configs" / "qwen3_4b_phase_a_lora.yml").read_text())
    raw["plugins"] = ["axolotl.integrations.liger.LigerPlugin", *raw["plugins"]]
    flags = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy")
    raw.update(dict.fromkeys(flags, True))
    cfg = validate(localise(raw, tiny_dir, tmp_path))
    assert all(cfg[flag] for flag in flags) and cfg.abscot_num_symbols == 64
