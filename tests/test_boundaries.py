"""The environment boundaries, by folder, each checked in a clean interpreter whose imports of the
packages that environment lacks fail (a meta-path finder raises ModuleNotFoundError for them):

* ``plugin.py`` and ``train/`` run inside axolotl's processes; every other folder imports without
  axolotl and trl (the vLLM environment has neither): the generate CLI, the lm-eval models and the
  rollout server among them;
* nothing outside the axolotl side imports vLLM at import time: it is loaded where an engine is
  built (the axolotl side runs in the training environment, which has no vLLM: every test proves it);
* ``core/`` and ``orchestration/`` import neither torch nor transformers (nor axolotl), and neither
  does what the orchestrator imports from elsewhere, also while it plans a multi-process run
  (``orchestrate.py --dry-run``);
* the flat layout's module names fail with their new home.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest
import yaml
from support import ROOT, offline_env

import abscot_plugin
import abscot_plugin.orchestration

# what runs inside axolotl's processes (the plugin, its dataset formats, trainers, collator)
AXOLOTL_SIDE = {"plugin", "train"}
# folders that import without torch: the orchestrator and the names, rows and traces it reads
TORCH_FREE = {"core", "orchestration"}
# the torch-free modules of other folders that the orchestrator imports
ORCHESTRATOR_READS = {"args", "eval.eval_cli", "eval.report", "rl.judge", "rl.rl_data", "train.data_counts"}

BLOCK = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in this environment)", name=name)
        return None

sys.meta_path.insert(0, Block())
"""
IMPORT_ALL = """
import importlib
failed = []
for module in {modules!r}:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed.append(f"{{module}}: {{exc}}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=offline_env(), capture_output=True, text=True, timeout=300
    )


def _modules(package) -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}."))


def _folder(module: str) -> str:
    return module.split(".")[1]


def test_the_folders_read_as_the_pipeline():
    folders = {m.name for m in pkgutil.iter_modules(abscot_plugin.__path__) if m.ispkg}
    assert folders == {"core", "tokens", "train", "generation", "eval", "rl", "checkpoints", "orchestration", "testing"}
    assert set(abscot_plugin.MOVED.values()) <= folders


def test_every_folder_but_the_axolotl_side_imports_without_axolotl_or_vllm():
    modules = [m for m in _modules(abscot_plugin) if _folder(m) not in AXOLOTL_SIDE]
    vllm_side = {
        "generation.generate",
        "generation.engines",
        "generation.vllm_decoder",
        "eval.lm_eval_models",
        "generation.decode",
        "rl.rollout_server",
        "rl.weight_sync",
    }
    assert {f"abscot_plugin.{name}" for name in vllm_side} <= set(modules)
    proc = _python(BLOCK.format(blocked={"axolotl", "trl", "vllm"}) + IMPORT_ALL.format(modules=modules))
    assert proc.returncode == 0, f"imports axolotl, trl or vllm:\n{proc.stdout}{proc.stderr[-2000:]}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("abscot_plugin.bottleneck", "abscot_plugin.train.bottleneck"),
        ("abscot_plugin.generate", "abscot_plugin.generation.generate"),
    ],
)
def test_a_flat_layout_name_fails_naming_its_new_home(old, new):
    proc = _python(f"import {old}")
    assert proc.returncode != 0 and f"{old} moved to {new}" in proc.stderr, proc.stderr[-2000:]
    proc = _python(f"import runpy; runpy.run_module({old!r}, run_name='__main__')")
    assert f"moved to {new}" in proc.stderr, proc.stderr[-2000:]


def test_the_orchestrator_imports_and_plans_without_torch(tiny_dir, tmp_path):
    modules = sorted(
        {m for m in _modules(abscot_plugin) if _folder(m) in TORCH_FREE}
        | {f"abscot_plugin.{name}" for name in ORCHESTRATOR_READS}
    )
    blocked = {"torch", "transformers", "axolotl"}
    proc = _python(BLOCK.format(blocked=blocked) + IMPORT_ALL.format(modules=modules))
    assert proc.returncode == 0, f"imports torch or transformers:\n{proc.stdout}{proc.stderr[-2000:]}"
    # planning a multi-process run asks whether there is a GPU: without torch too
    cfg = yaml.safe_load((ROOT / "configs" / "runs" / "tiny.yml").read_text())
    cfg["output_dir"] = str(tmp_path / "run")
    cfg["base_model"] = str(tiny_dir)  # a fresh clone has no build/tiny
    cfg["training"]["launcher"]["num_processes"] = 2
    (tmp_path / "run.yml").write_text(yaml.safe_dump(cfg))
    dry_run = "import runpy\nsys.argv = sys.argv[1:]\nrunpy.run_path('orchestrate.py', run_name='__main__')"
    proc = _python(BLOCK.format(blocked=blocked) + dry_run, "orchestrate.py", str(tmp_path / "run.yml"), "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "r2_b_train" in proc.stdout and "--num_processes 2" in proc.stdout
