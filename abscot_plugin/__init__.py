"""abscot: Abstract Chain-of-Thought training as an axolotl plugin.

Add to an axolotl config::

    plugins:
      - abscot_plugin.AbsCoTPlugin
    datasets:
      - path: dolci.jsonl
        ds_type: json
        type: abscot_plugin.train.bottleneck   # Phase A; abscot_plugin.train.self_distill for Phase B,
                                               # abscot_plugin.rl_prompts for GRPO (rl: grpo)

The subpackages follow the data flow (README, "Layout"): ``core`` (names, rows, prompts, traces;
no torch) → ``tokens`` (vocabulary, token layout, masks) → ``train`` (what runs inside axolotl) →
``generation`` (constrained decoding, teacher traces) → ``eval`` → ``rl``; ``checkpoints`` merges
and extends models, ``orchestration`` runs the rounds, ``testing`` holds the tiny props.

The modules of the flat layout moved into these folders: importing one by its old name raises an
``ImportError`` that names its new home (:data:`MOVED`), and a YAML that names one is refused at
config validation (``args``).
"""

from __future__ import annotations

import importlib.abc
import sys

__all__ = ["AbsCoTPlugin", "AbsCoTArgs", "MOVED", "moved_name"]

# old flat module -> its subpackage (0.1's layout; README, "Layout")
MOVED = {
    **dict.fromkeys(("choices", "symbols", "rows", "prompts", "traces", "fileio", "processes"), "core"),
    **dict.fromkeys(("vocab", "tokenization", "sequences", "segments", "tokenizer_prep"), "tokens"),
    **dict.fromkeys(
        (
            "dataset_strategy",
            "bottleneck",
            "self_distill",
            "data_counts",
            "collator",
            "trainer",
            "loss_logits",
            "grpo_trainer",
        ),
        "train",
    ),
    **dict.fromkeys(("decode", "generate"), "generation"),
    **dict.fromkeys(("lm_eval_models", "eval_cli", "scoring", "report"), "eval"),
    **dict.fromkeys(
        ("rl_data", "rewards", "judge", "rollout", "rollout_client", "rollout_server", "weight_sync"),
        "rl",
    ),
    **dict.fromkeys(("merge", "extend"), "checkpoints"),
    **dict.fromkeys(("fixtures", "toy"), "testing"),
}


def moved_name(dotted: str) -> str | None:
    """The new spelling of a dotted name under the flat layout, None if it is not one.

    >>> moved_name("abscot_plugin.grpo_trainer.AbsCoTGRPOTrainer")
    'abscot_plugin.train.grpo_trainer.AbsCoTGRPOTrainer'
    >>> moved_name("abscot_plugin.train.bottleneck") is None
    True
    """
    head, _, rest = str(dotted).partition(".")
    module = rest.partition(".")[0]
    if head != __name__ or module not in MOVED:
        return None
    return f"{__name__}.{MOVED[module]}.{rest}"


class _MovedModules(importlib.abc.MetaPathFinder):
    """Refuses ``abscot_plugin.<old module>`` with the new name. A plain ImportError, not a
    ModuleNotFoundError: axolotl's dataset-type loader swallows the latter and falls back silently."""

    def find_spec(self, name, path=None, target=None):
        new = moved_name(name) if name.count(".") == 1 else None
        if new is not None:
            raise ImportError(f"{name} moved to {new}: update the import, the YAML or the command line")
        return None


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    # Lazy, so that the vocabulary, traces and generation modules import without axolotl (the
    # vLLM environment has none); axolotl resolves `abscot_plugin.AbsCoTPlugin` through this.
    if name == "AbsCoTPlugin":
        from .plugin import AbsCoTPlugin

        return AbsCoTPlugin
    if name == "AbsCoTArgs":
        from .args import AbsCoTArgs

        return AbsCoTArgs
    if name == "rl_prompts":
        # the RL prompts dataset type stays a package attribute: axolotl's RL type loader resolves
        # only `<top-level package>.<function>`
        from .rl.rl_data import rl_prompts

        return rl_prompts
    raise AttributeError(f"module 'abscot_plugin' has no attribute {name!r}")
