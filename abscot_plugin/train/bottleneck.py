"""Phase A dataset format: ``type: abscot_plugin.train.bottleneck``.

[x; c; <beginabstract> z <endabstract>; y] with loss on z and y, and a ``segment_ids`` column
from which the trainer builds the mask that hides c from y.
"""

from ..core.choices import Phase
from .dataset_strategy import AbstractCoTStrategy


def load(tokenizer, cfg, ds_cfg=None, processor=None) -> AbstractCoTStrategy:
    """axolotl entry point for the bottleneck format."""
    return AbstractCoTStrategy(tokenizer, cfg, Phase.A, ds_cfg=ds_cfg)
