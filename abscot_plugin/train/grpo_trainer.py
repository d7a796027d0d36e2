"""The GRPO trainer of the RL stage: axolotl's GRPO trainer whose per-token log-probabilities
(policy, old policy and reference, hence the ratios and the KL) are computed under the same
distributions the rollout sampled from (:func:`abscot_plugin.rl.rollout.completion_log_probs`:
the stage-1 constraint at trace positions, temperature-scaled softmax elsewhere).

Set it with ``trainer_cls: abscot_plugin.train.grpo_trainer.AbsCoTGRPOTrainer`` (axolotl constructs a
plugin's RL trainer without arguments, so the plugin cannot supply it); the plugin attaches the
:class:`~abscot_plugin.rl.rollout.RLSetup` after construction (``post_trainer_create``).
"""

from __future__ import annotations

import torch
from axolotl.core.trainers.grpo.trainer import AxolotlGRPOTrainer
from trl.trainer.utils import entropy_from_logits

from ..rl.rollout import RLSetup, completion_log_probs
from ..rl.rollout_client import ServerRollouts

_MULTIMODAL = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "image_position_ids")


class AbsCoTGRPOTrainer(AxolotlGRPOTrainer):
    """GRPO over the constrained trace and the free answer (module doc)."""

    abscot_rl: RLSetup | None = None
    abscot_server: ServerRollouts | None = None  # abscot_rollout_server set: rollout_func samples there

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """TRL's method for text-only models, with :func:`completion_log_probs` in place of the
        full-vocabulary log-softmax (entropies stay those of the unconstrained distribution)."""
        if self.abscot_rl is None:
            raise RuntimeError("AbsCoTGRPOTrainer has no RL setup: add plugins: [abscot_plugin.AbsCoTPlugin]")
        if compute_aux_loss or any(multimodal.get(k) is not None for k in _MULTIMODAL):
            raise ValueError("the abscot GRPO trainer supports text-only, non-MoE-aux-loss models")
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            inputs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
            if "logits_to_keep" in self.model_kwarg_keys:
                inputs["logits_to_keep"] = logits_to_keep + 1
            logits = model(**inputs).logits[:, :-1, :][:, -logits_to_keep:, :]
            logps.append(completion_log_probs(logits, ids[:, -logits_to_keep:], self.abscot_rl))
            if compute_entropy:
                with torch.no_grad():
                    entropies.append(entropy_from_logits(logits / self.temperature))
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None
