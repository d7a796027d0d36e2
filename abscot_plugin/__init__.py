"""abscot: Abstract Chain-of-Thought training as an axolotl plugin.

Add to an axolotl config::

    plugins:
      - abscot_plugin.AbsCoTPlugin
    datasets:
      - path: dolci.jsonl
        ds_type: json
        type: abscot_plugin.bottleneck     # Phase A; abscot_plugin.self_distill for Phase B,
                                           # abscot_plugin.rl_prompts for GRPO (rl: grpo)

The plugin extends the tokenizer with V_abs (``tokenizer_prep``), initialises and trains the new
rows (``vocab``), and swaps in the trainer (loss-only logits, ``loss_logits``; the bottleneck mask,
``segments``) and Phase A's collator (``collator``).
"""

__all__ = ["AbsCoTPlugin", "AbsCoTArgs"]


def __getattr__(name: str):
    # Lazy, so that the vocabulary, traces and generation modules import without axolotl (the
    # vLLM environment has none); axolotl resolves `abscot_plugin.AbsCoTPlugin` through this.
    if name == "AbsCoTPlugin":
        from .plugin import AbsCoTPlugin

        return AbsCoTPlugin
    if name == "AbsCoTArgs":
        from .args import AbsCoTArgs

        return AbsCoTArgs
    if name == "rl_prompts":  # the RL prompts dataset type (axolotl looks it up as an attribute)
        from .rl_data import rl_prompts

        return rl_prompts
    raise AttributeError(f"module 'abscot_plugin' has no attribute {name!r}")
