"""Liger kernels (axolotl's Liger plugin) with abscot: what can be checked on a CPU, where Liger's
Triton kernels do not run (``0 active drivers``). Its patches leave the attention path that
receives the bottleneck mask alone, and its fused-linear-cross-entropy forward takes the trainer's
loss-only inputs and the mask (tests/liger_worker.py, in a process of its own: the patches are
process-global). The kernels themselves are GPU-only and unverified here (bench/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import ROOT, offline_env


@pytest.fixture(scope="module")
def liger() -> dict:
    proc = subprocess.run(
        [sys.executable, "tests/liger_worker.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=offline_env(PYTHONPATH=str(ROOT)),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_liger_patches_leave_the_attention_path_alone(liger):
    from liger_worker import ATTENTION_PATH, LIGER_TARGETS

    assert liger["kept"] == list(ATTENTION_PATH)  # attention, its mask builders and the layers' forwards
    assert liger["replaced"] == list(LIGER_TARGETS)  # RMSNorm, SwiGLU MLP, RoPE, the CausalLM forward


def test_liger_forward_takes_loss_only_inputs_and_the_bottleneck_mask(liger):
    assert liger["liger_logit_positions"] == liger["kept_positions"] < 48
    assert liger["loss_liger"] == pytest.approx(liger["loss_stock"], rel=1e-6)
    assert liger["answer_diff"] < 1e-5 < 1e-3 < liger["abstract_diff"]  # the answer does not see the CoT
