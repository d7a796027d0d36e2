"""The trainer's side of the rollout server (:mod:`abscot_plugin.rl.rollout_server`): stdlib HTTP and
torch only, so the training environment never imports vLLM.

* :class:`RemoteDecoder`: ``sample_traces`` / ``sample_answers`` of
  :class:`~abscot_plugin.generation.hf_decoder.HFDecoder`, answered by the server's
  :class:`~abscot_plugin.generation.vllm_decoder.VLLMDecoder` (so :func:`abscot_plugin.rl.rollout.rollout` runs on it
  unchanged);
* :class:`WeightPush`: the trainer's main process pushing the policy's weights
  (:mod:`abscot_plugin.rl.weight_sync`);
* :class:`ServerRollouts`: what ``rollout_func`` holds under ``abscot_rollout_server``: before
  sampling, a sync whenever the optimizer stepped since the last one (the first call included):
  the main process pushes, every process waits for it, then each asks for its own prompts;
* :func:`started_server`: a server process for the length of a ``with`` block (tests, bench; what
  an orchestrator stage would use).

Every failure to reach the server is a :class:`RolloutServerError` naming the URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from ..core.choices import DEFAULT_ROLLOUT_TIMEOUT_S
from ..core.processes import stop_group
from ..core.traces import TraceSettings
from ..generation.decode import Sampled, prompt_seed
from .weight_sync import (
    address_towards,
    check_syncable,
    hf_weights,
    host_store,
    is_partitioned,
    open_group,
    send,
    tensor_meta,
)


class RolloutServerError(RuntimeError):
    """The rollout server could not be reached or refused a request."""


@contextlib.contextmanager
def started_server(
    python: str | Path,
    model: str | Path,
    args: Sequence[str] = (),
    log: Path | None = None,
    env: dict[str, str] | None = None,
    start_timeout_s: float = 600.0,
) -> Iterator[str]:
    """Run ``python -m abscot_plugin.rl.rollout_server MODEL *args`` on a free port of 127.0.0.1
    (``python``: the vLLM environment's interpreter; output to ``log``), wait until it answers,
    yield its URL, and stop its process group on exit. RolloutServerError (with the log's end)
    if it exits or does not answer within ``start_timeout_s``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (the server writes it until exit)
    proc = subprocess.Popen(
        [str(python), "-m", "abscot_plugin.rl.rollout_server", str(model), "--port", str(port), *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
                state = f"exited with {proc.returncode}" if proc.returncode is not None else "did not answer in time"
                raise RolloutServerError(f"rollout server of {model} {state}: {tail}")
            try:
                call(url, "/health", timeout_s=2)
                break
            except RolloutServerError:
                time.sleep(2)
        yield url
    finally:
        stop_group(proc)
        if log:
            out.close()


def call(url: str, path: str, body: dict | None = None, timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S) -> dict:
    """``GET url+path`` (``body`` None) or ``POST`` ``body`` as JSON; the JSON reply."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):  # the server's {"error": ...}, else the body
            detail = json.loads(detail)["error"]
        raise RolloutServerError(f"rollout server {url}{path}: HTTP {exc.code}: {detail}") from None
    except TimeoutError:
        raise RolloutServerError(f"rollout server {url}{path}: no reply within {timeout_s:g} s") from None
    except urllib.error.URLError as exc:
        reason = f"no reply within {timeout_s:g} s" if isinstance(exc.reason, TimeoutError) else exc.reason
        raise RolloutServerError(f"rollout server {url}{path}: unreachable ({reason})") from None


def _sampled(reply: dict) -> list[Sampled]:
    return [Sampled(list(s["ids"]), [float(v) for v in s["log_probs"]]) for s in reply["samples"]]


class RemoteDecoder:
    """The sampling half of :class:`~abscot_plugin.generation.hf_decoder.HFDecoder`, served by the rollout server."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S):
        self.url = url
        self.timeout_s = timeout_s

    def sample_traces(
        self, prefixes: list[list[int]], settings: TraceSettings, seeds: Sequence[int] | None = None
    ) -> list[Sampled]:
        """:meth:`~abscot_plugin.generation.hf_decoder.HFDecoder.sample_traces` on the server."""
        if seeds is None:
            seeds = [prompt_seed(settings.seed, p) for p in prefixes]
        body = {"prefixes": prefixes, "settings": vars(settings), "seeds": list(seeds)}
        return _sampled(call(self.url, "/sample_traces", body, self.timeout_s))

    def sample_answers(
        self,
        prompts: list[list[int]],
        temperature: float,
        max_new_tokens: int,
        stop_ids: list[int],
        seeds: Sequence[int],
    ) -> list[Sampled]:
        """:meth:`~abscot_plugin.generation.hf_decoder.HFDecoder.sample_answers` on the server."""
        body = {
            "prompts": prompts,
            "temperature": temperature,
            "max_tokens": max_new_tokens,
            "stop_ids": list(stop_ids),
            "seeds": list(seeds),
        }
        return _sampled(call(self.url, "/sample_answers", body, self.timeout_s))


class _Background(threading.Thread):
    """A blocking call in a thread, e.g. an HTTP request the server answers only once the
    broadcast it waits for is over."""

    def __init__(self, fn: Callable[[], Any]):
        super().__init__(daemon=True)
        self.fn, self.reply, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.reply = self.fn()
        except Exception as exc:  # noqa: BLE001 (re-raised by result)
            self.error = exc

    def check(self) -> None:
        """Raise the call's error if it already failed."""
        if self.error is not None:
            raise self.error

    def result(self) -> Any:
        self.join()
        self.check()
        return self.reply


class WeightPush:
    """Rank 0 of the weight sync: joins the server's workers in a sync group on the first push."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S):
        self.url = url
        self.timeout_s = timeout_s
        self.group = None
        self.device: torch.device | None = None

    def _open(self, device: torch.device) -> None:
        world = 1 + int(call(self.url, "/health", None, self.timeout_s)["workers"])
        store = host_store(self.timeout_s, world)
        host = address_towards(urlsplit(self.url).hostname or "127.0.0.1")
        body = {
            "host": host,
            "port": store.port,
            "world_size": world,
            "timeout_s": self.timeout_s,
            "backend": "nccl" if device.type == "cuda" else "gloo",
        }
        group = _Background(lambda: open_group(host, store.port, 0, world, device, self.timeout_s, store=store))
        call(self.url, "/weights/init", body, self.timeout_s)  # a refusal raises here, not after the timeout
        self.group = group.result()
        self.store, self.device = store, device

    def push(self, model: torch.nn.Module) -> int:
        """Send ``model``'s weights (:func:`~abscot_plugin.rl.weight_sync.hf_weights`); the number of
        tensors the server loaded."""
        meta = tensor_meta(hf_weights(model, gather=False))
        device = next(model.parameters()).device
        if self.group is None or device != self.device:
            self._open(device)
        loaded = _Background(lambda: call(self.url, "/weights/update", {"meta": meta}, self.timeout_s))
        send(self.group, (t for _, t in hf_weights(model)), self.device, loaded.check)
        return int(loaded.result()["tensors"])


class ServerRollouts:
    """``rollout_func``'s backend under ``abscot_rollout_server`` (module doc)."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S):
        self.decoder = RemoteDecoder(url, timeout_s)
        self.weights = WeightPush(url, timeout_s)
        self.synced_step: int | None = None

    def sync(self, trainer: Any) -> None:
        """Push the policy's weights if the optimizer stepped since the last push (main process;
        the others wait at a barrier, after joining each parameter's gather under ZeRO-3)."""
        step = int(trainer.state.global_step)
        if step == self.synced_step:
            return
        accelerator = trainer.accelerator
        model = accelerator.unwrap_model(trainer.model)
        check_syncable(model)  # on every process: a refusal on the main one alone would hang the others
        if accelerator.is_main_process:
            self.weights.push(model)
        elif is_partitioned(model):
            for _ in hf_weights(model):  # ZeRO-3: enter each parameter's gather with the main process
                pass
        accelerator.wait_for_everyone()
        self.synced_step = step
