"""The environment boundaries, each checked in a clean interpreter whose imports of the packages
that environment lacks fail (a meta-path finder raises ModuleNotFoundError for them):

* the vLLM environment has no axolotl and no trl: every module but the axolotl side imports
  without them (the generate CLI, the lm-eval models, the rollout server among them);
* the orchestrator imports neither torch nor transformers (nor axolotl), also while it plans a
  multi-process run (``orchestrate.py --dry-run``)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import yaml
from support import ROOT, offline_env

import abscot_plugin
import abscot_plugin.orchestration

# the modules that run inside axolotl's processes (the plugin, its dataset formats, trainer, collator)
AXOLOTL_SIDE = {"plugin", "dataset_strategy", "bottleneck", "self_distill", "trainer", "collator", "grpo_trainer"}
# what the orchestrator imports, and the pure modules it builds on
TORCH_FREE = {
    "args", "choices", "data_counts", "eval_cli", "fileio", "judge", "report", "rewards", "rl_data", "rows", "symbols",
    "traces",
}

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
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=offline_env(), capture_output=True,
                          text=True, timeout=300)


def _modules(package) -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}."))


def test_the_vllm_side_imports_without_axolotl():
    modules = [m for m in _modules(abscot_plugin) if m.split(".")[1] not in AXOLOTL_SIDE]
    vllm_side = {"generate", "lm_eval_models", "decode", "rollout_server", "weight_sync"}
    assert {f"abscot_plugin.{name}" for name in vllm_side} <= set(modules)
    proc = _python(BLOCK.format(blocked={"axolotl", "trl"}) + IMPORT_ALL.format(modules=modules))
    assert proc.returncode == 0, f"imports axolotl or trl:\n{proc.stdout}{proc.stderr[-2000:]}"


def test_the_orchestrator_imports_and_plans_without_torch(tiny_dir, tmp_path):
    modules = [f"abscot_plugin.{name}" for name in sorted(TORCH_FREE)] + _modules(abscot_plugin.orchestration)
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
