"""Child processes in a group of their own (standard library only: the orchestrator, the trainer's
rollout client and the tests use it)."""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session=True``: launchers,
    ranks, vLLM workers), wait up to ``grace_s``, then SIGKILL what is left and reap ``proc``."""
    with suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
