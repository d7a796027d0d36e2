"""Phase B dataset format: ``type: abscot_plugin.train.self_distill``.

[x; <beginabstract> z <endabstract>; y], plain causal attention (packing allowed), loss on z and y.
"""

from ..core.choices import Phase
from .dataset_strategy import AbstractCoTStrategy


def load(tokenizer, cfg, ds_cfg=None, processor=None) -> AbstractCoTStrategy:
    """axolotl entry point for the self-distillation format."""
    return AbstractCoTStrategy(tokenizer, cfg, Phase.B, ds_cfg=ds_cfg)
