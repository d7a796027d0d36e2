"""The paper's LLM-judge reward for the RL stage: an OpenAI-compatible chat endpoint grades each
answer on a 0-10 rubric (the paper grades with gpt-oss-20b; Ramji et al., arXiv 2604.22709, RL
stage), and the score / 10 is the reward.

:class:`JudgeReward` is a reward function with TRL's signature ``(prompts, completions,
completion_ids=None, **kwargs) -> list[float]``. What the judge reads per completion:

* the problem: the prompt TRL passes (the RL dataset's ``prompt`` column, the problem text; of a
  conversational prompt, its last message);
* the reference answer: the dataset column ``JudgeSettings.reference_field`` (default ``gold``,
  what the RL prompts dataset type writes), which TRL passes to reward functions as a keyword
  argument; required only when the rubric uses ``{reference}``; a null value reads ``(none)``;
* the response: the answer y alone, never the trace: the rollout's ``abscot_answer`` column when
  present (the answer decoded from its ids, the stop token dropped), else TRL's completion text
  (decoded with ``skip_special_tokens=True``, which drops the trace's special tokens).

The rubric is a text file with the placeholders ``{problem}``, ``{reference}`` and
``{response}`` (the shipped one: ``abscot_plugin/data/judge_rubric.md``, our own wording of a
0-10 rubric); the judge must end its reply with ``Score: N`` (:func:`parse_score`, the last such
line counts).

A judgment fails when the server cannot be reached, times out, answers with an HTTP error or with
no parsable score in [0, 10]. Unreachable servers, timeouts, HTTP 429 and 5xx are retried
(``retries``, exponential back-off). After that, ``on_failure: error`` raises :class:`JudgeError`;
``zero`` scores the completion 0, counts the failure by reason (:attr:`JudgeReward.counts`),
logs a warning per batch and reports ``judge/failure_rate`` through TRL's ``log_metric``; a batch
where more than ``max_failure_rate`` of the judgments fail raises :class:`JudgeError` either way
(a dead judge must not train on zeros). The first call checks that the server serves ``model``
(``check_on_start``).

In a GRPO YAML: ``trl.reward_funcs: [abscot_plugin.rl.judge.judge]`` (:func:`judge`), whose settings
are the YAML file (:class:`JudgeSettings` keys) named by ``$ABSCOT_JUDGE_CONFIG``; the
orchestrator sets that variable from the run config's ``rl.judge``. Example settings:
``configs/judge/gpt_oss_20b.yml``.

Torch-free and axolotl-free (standard library HTTP), like the other modules reward functions and
the orchestrator read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .rl_data import ANSWER_COLUMN, GOLD_FIELD

logger = logging.getLogger(__name__)

DEFAULT_RUBRIC = Path(__file__).resolve().parents[1] / "data" / "judge_rubric.md"
SCORE_MAX = 10
SCORE_RE = re.compile(r"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
PLACEHOLDER_RE = re.compile(r"\{(problem|reference|response)\}")
RETRYABLE_HTTP = {429, 500, 502, 503, 504}
NO_REFERENCE = "(none)"
# the environment variable naming the judge settings file that :func:`judge` reads
CONFIG_ENV = "ABSCOT_JUDGE_CONFIG"


class JudgeError(RuntimeError):
    """The judge cannot grade: unreachable at the start, too many failures, or ``on_failure: error``."""


class JudgeSettings(BaseModel):
    """How to reach and ask the judge (a YAML file of these keys: :func:`load_settings`).

    >>> JudgeSettings(url="http://127.0.0.1:8000/v1", model="openai/gpt-oss-20b").concurrency
    8
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="the served model name, e.g. openai/gpt-oss-20b (the paper's judge)")
    rubric: Path = Field(default=DEFAULT_RUBRIC, description="rubric template: {problem} {reference} {response}")
    api_key_env: str | None = Field(default=None, description="environment variable holding the API key")
    timeout_s: float = Field(default=120.0, gt=0, description="per request (a reasoning judge is slow)")
    retries: int = Field(default=2, ge=0, description="retries of unreachable / timed-out / 429 / 5xx requests")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles per retry")
    concurrency: int = Field(default=8, ge=1, description="requests in flight")
    max_tokens: int = Field(default=2048, ge=1, description="the judge's reply budget (reasoning included)")
    temperature: float = Field(default=0.0, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request keys (reasoning_effort, …)")
    on_failure: Literal["error", "zero"] = Field(default="zero", description="a failed judgment: raise, or reward 0")
    max_failure_rate: float = Field(default=0.5, ge=0, le=1, description="more failures in a batch: JudgeError")
    check_on_start: bool = Field(default=True, description="first call: the server must list `model`")
    reference_field: str = Field(default=GOLD_FIELD, description="the column of the gold answer")
    response_field: str = Field(default=ANSWER_COLUMN, description="the rollout's answer column, if present")

    @field_validator("rubric")
    @classmethod
    def _rubric(cls, v: Path) -> Path:
        path = Path(v).expanduser().absolute()
        if not path.is_file():
            raise ValueError(f"rubric file not found: {v}")
        if "{response}" not in path.read_text(encoding="utf-8"):
            raise ValueError(f"rubric {v} has no {{response}} placeholder")
        return path

    @model_validator(mode="after")
    def _api_key(self) -> JudgeSettings:
        if self.api_key_env and self.api_key_env not in os.environ:
            raise ValueError(f"api_key_env {self.api_key_env}: no such environment variable")
        return self


def render_prompt(rubric: str, problem: str, response: str, reference: str | None) -> str:
    """The rubric with its placeholders filled in one pass (text inside the values is kept as is).

    >>> render_prompt("Q {problem} A {response} R {reference}", "1+{response}?", "2", None)
    'Q 1+{response}? A 2 R (none)'
    """
    values = {"problem": problem, "response": response, "reference": NO_REFERENCE if reference is None else reference}
    return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], rubric)


def parse_score(reply: str | None) -> float | None:
    """The reward in [0, 1] from the judge's reply: the last ``Score: N`` over 10; None when there
    is none or it is above 10.

    >>> parse_score("Work... Score: 7"), parse_score("Score: 11"), parse_score("no idea")
    (0.7, None, None)
    """
    matches = SCORE_RE.findall(reply or "")
    if not matches:
        return None
    score = float(matches[-1])
    return score / SCORE_MAX if score <= SCORE_MAX else None


def message_text(value: Any) -> str:
    """A TRL prompt or completion as text: a string, or the content of its last message
    (conversational)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content") or "")
    raise JudgeError(f"judge: cannot read a prompt or completion of type {type(value).__name__}")


class _Failure(Exception):
    """One failed judgment: ``reason`` counts it, ``retry`` says whether another try may help."""

    def __init__(self, reason: str, detail: str, retry: bool):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.retry = reason, retry


class JudgeReward:
    """TRL reward function: the judge's score / 10 per completion (module docstring).

    ``counts``: judgments made and failures by reason since construction (``judged``, then
    ``unreachable``, ``timeout``, ``http <code>``, ``garbled``, ``no score``).
    """

    __name__ = "judge"  # TRL logs each reward under its function's name: rewards/judge/mean

    def __init__(self, settings: JudgeSettings):
        self.settings = settings
        self.rubric = settings.rubric.read_text(encoding="utf-8")
        self.counts: Counter[str] = Counter()
        self._checked = not settings.check_on_start
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def _endpoint(self, path: str) -> str:
        return f"{self.settings.url.rstrip('/')}/{path}"

    def _request(self, path: str, body: dict[str, Any] | None) -> Any:
        """GET (``body`` None) or POST JSON; the decoded JSON reply, or :class:`_Failure`."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._endpoint(path), data=data, headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            raise _Failure(f"http {exc.code}", detail, exc.code in RETRYABLE_HTTP) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            timed_out = isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError)
            where = f"{self._endpoint(path)}: {reason}"
            raise _Failure("timeout" if timed_out else "unreachable", where, True) from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise _Failure("garbled", f"not JSON: {raw[:200]!r}", False) from None

    def check_server(self) -> None:
        """Raise :class:`JudgeError` unless ``url`` answers ``GET /models`` listing ``model``."""
        try:
            listed = [m.get("id") for m in self._request("models", None).get("data", [])]
        except (_Failure, AttributeError) as exc:
            raise JudgeError(f"judge at {self.settings.url} is not usable: {exc}") from None
        if self.settings.model not in listed:
            raise JudgeError(
                f"judge at {self.settings.url} does not serve model {self.settings.model!r} (it serves {listed})"
            )

    def _ask_once(self, body: dict[str, Any]) -> float:
        """One request: the reward, or :class:`_Failure`."""
        reply = self._request("chat/completions", body)
        try:
            content = reply["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Failure("garbled", f"no choices[0].message in {str(reply)[:200]}", False) from None
        reward = parse_score(content)
        if reward is None:
            raise _Failure("no score", f"reply without 'Score: N' (N in 0..10): {str(content)[-200:]!r}", False)
        return reward

    def _ask(self, prompt: str) -> float:
        """One judgment with retries: the reward, or the last :class:`_Failure`."""
        body = {
            "model": self.settings.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
            **self.settings.extra_body,
        }
        attempt = 0
        while True:
            try:
                return self._ask_once(body)
            except _Failure as failure:
                if not failure.retry or attempt == self.settings.retries:
                    raise
                time.sleep(self.settings.backoff_s * 2**attempt)
                attempt += 1

    def _column(self, kwargs: dict[str, Any], name: str, n: int) -> list[Any] | None:
        """The per-completion column ``name`` of the reward's keyword arguments (None: absent)."""
        if kwargs.get(name) is None:
            return None
        if len(kwargs[name]) != n:
            raise JudgeError(f"judge: column {name!r} has {len(kwargs[name])} values for {n} completions")
        return list(kwargs[name])

    def judge_prompts(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[str]:
        """The rubric filled in per completion: what the judge is asked (module docstring)."""
        s, n = self.settings, len(completions)
        if len(prompts) != n:
            raise JudgeError(f"judge: {len(prompts)} prompts for {n} completions")
        references = self._column(kwargs, s.reference_field, n)
        if references is None and "{reference}" in self.rubric:
            columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
            raise JudgeError(
                f"judge: the rubric uses {{reference}} but column {s.reference_field!r} is missing (columns: {columns})"
            )
        responses = self._column(kwargs, s.response_field, n) or completions
        return [
            render_prompt(self.rubric, message_text(p), message_text(r), None if ref is None else str(ref))
            for p, r, ref in zip(prompts, responses, references or [None] * n, strict=True)
        ]

    def __call__(
        self, prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None, **kwargs: Any
    ) -> list[float]:
        """Rewards in [0, 1] for ``completions`` (dataset columns in ``kwargs``; module docstring)."""
        s, n = self.settings, len(completions)
        prompts_text = self.judge_prompts(prompts, completions, **kwargs)
        if not self._checked:
            self.check_server()
            self._checked = True
        with ThreadPoolExecutor(max_workers=min(s.concurrency, max(n, 1))) as pool:
            outcomes = list(pool.map(self._judge_safely, prompts_text))
        return self._settle(outcomes, kwargs.get("log_metric"))

    def _judge_safely(self, prompt: str) -> float | _Failure:
        try:
            return self._ask(prompt)
        except _Failure as failure:
            return failure

    def _settle(self, outcomes: list[float | _Failure], log_metric: Any) -> list[float]:
        """Count, log and apply the failure policy; the rewards (0 for a failure under ``zero``)."""
        failures = [o for o in outcomes if isinstance(o, _Failure)]
        self.counts["judged"] += len(outcomes)
        self.counts.update(f.reason for f in failures)
        rate = len(failures) / max(len(outcomes), 1)
        if callable(log_metric):
            log_metric("judge/failure_rate", rate)
        if failures:
            first = failures[0]
            if self.settings.on_failure == "error":
                raise JudgeError(f"judge: {len(failures)}/{len(outcomes)} judgments failed, first: {first}")
            total = sum(v for k, v in self.counts.items() if k != "judged")
            logger.warning(
                "judge: %d/%d judgments failed in this batch and were scored 0 (%s); %d/%d so far; first: %s",
                len(failures),
                len(outcomes),
                dict(Counter(f.reason for f in failures)),
                total,
                self.counts["judged"],
                first,
            )
            if rate > self.settings.max_failure_rate:
                raise JudgeError(
                    f"judge: {len(failures)}/{len(outcomes)} judgments failed in one batch, above "
                    f"max_failure_rate {self.settings.max_failure_rate}; first: {first}"
                )
        return [0.0 if isinstance(o, _Failure) else o for o in outcomes]


def load_settings(path: str | Path) -> JudgeSettings:
    """:class:`JudgeSettings` from a YAML file; ValueError naming the file and the key. A relative
    ``rubric`` is relative to the current directory (run from the repository root)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"judge settings {path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"judge settings {path}: must be a YAML mapping")
    try:
        return JudgeSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ValueError(f"judge settings {path}: {problems}") from None


_JUDGES: dict[str, JudgeReward] = {}


def judge(
    prompts: list[Any], completions: list[Any], completion_ids: list[list[int]] | None = None, **kwargs: Any
) -> list[float]:
    """The judge as a reward function named in a GRPO YAML (``trl.reward_funcs:
    [abscot_plugin.rl.judge.judge]``; logged as ``rewards/judge/mean``): the :class:`JudgeReward` of
    the settings file named by ``$ABSCOT_JUDGE_CONFIG`` (the orchestrator sets it from
    ``rl.judge``), built on the first call of each process."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise JudgeError(f"the judge reward needs ${CONFIG_ENV}: the path of its settings file (JudgeSettings YAML)")
    if path not in _JUDGES:
        _JUDGES[path] = JudgeReward(load_settings(path))
    return _JUDGES[path](prompts, completions, completion_ids, **kwargs)


JUDGE_REWARD = f"{__name__}.{judge.__name__}"  # how a GRPO YAML names it in trl.reward_funcs
