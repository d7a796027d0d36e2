"""Test-only axolotl plugins for the end-to-end tests: listed under ``plugins:`` after abscot's
(``run_axolotl`` puts tests/ on the subprocess's PYTHONPATH). Each writes what it saw to the file
that ``ABSCOT_PROBE_OUT`` names."""

from __future__ import annotations

import json
import os

import torch
from axolotl.integrations.base import BasePlugin

DROP_SEGMENTS = "ABSCOT_PROBE_DROP_SEGMENTS"


class MaskProbe(BasePlugin):
    """Records the first training forward: the batch's ``input_ids`` and ``labels``, the
    ``attention_mask`` every attention module received and how many positions the lm_head
    projected (``torch.save`` of a dict). With ``ABSCOT_PROBE_DROP_SEGMENTS=1``
    it instead removes ``segment_ids`` from every batch, as a broken collator would."""

    def post_trainer_create(self, cfg, trainer):
        if os.environ.get(DROP_SEGMENTS) == "1":
            collate = trainer.data_collator

            def without_segments(features, return_tensors=None):
                batch = collate(features, return_tensors=return_tensors)
                batch.pop("segment_ids", None)
                return batch

            trainer.data_collator = without_segments
            return
        seen: dict = {"masks": []}
        attention = [m for m in trainer.model.modules() if type(m).__name__.endswith("Attention")]

        def on_attention(module, args, kwargs):
            if "input_ids" in seen and len(seen["masks"]) < len(attention):
                seen["masks"].append(kwargs["attention_mask"].detach().cpu())

        def on_model(module, args, kwargs):
            if "input_ids" not in seen:
                seen["input_ids"] = kwargs["input_ids"].detach().cpu()
                seen["labels"] = kwargs["labels"].detach().cpu()

        def on_lm_head(module, args):
            if "input_ids" in seen and "lm_head_positions" not in seen:
                seen["lm_head_positions"] = args[0].shape[1]

        def after_model(module, args, kwargs, output):
            if "input_ids" in seen and not os.path.exists(os.environ["ABSCOT_PROBE_OUT"]):
                torch.save(seen, os.environ["ABSCOT_PROBE_OUT"])

        for module in attention:
            module.register_forward_pre_hook(on_attention, with_kwargs=True)
        trainer.model.register_forward_pre_hook(on_model, with_kwargs=True)
        trainer.model.get_output_embeddings().register_forward_pre_hook(on_lm_head)
        trainer.model.register_forward_hook(after_model, with_kwargs=True)


class ZeroOnCpu(BasePlugin):
    """Lets axolotl 0.19 run DeepSpeed ZeRO-3 in one CPU process, and records whether the model was
    built partitioned.

    axolotl's ``setup_deepspeed_env`` initialises DeepSpeed with the NCCL backend whenever
    WORLD_SIZE is 1, which a CPU cannot run; DeepSpeed reuses a process group that exists already,
    so ``register`` (which axolotl calls before that) makes a gloo group of one process.
    """

    def register(self, cfg):
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo", rank=0, world_size=1)

    def post_model_build(self, cfg, model):
        weight = model.get_input_embeddings().weight
        seen = {
            "partitioned": hasattr(weight, "ds_id"),
            "shape": list(weight.shape),
            "ds_shape": list(getattr(weight, "ds_shape", [])),
        }
        with open(os.environ["ABSCOT_PROBE_OUT"], "w", encoding="utf-8") as fh:
            json.dump(seen, fh)


class GRPOProbe(BasePlugin):
    """Records the first GRPO loss batch (``torch.save`` of a dict): completion ids, the loss mask's
    two factors (``completion_mask``, ``tool_mask`` = the rollout's env_mask), the reference
    log-probs and the policy's own log-probs of that batch, computed before its optimizer step."""

    def post_trainer_create(self, cfg, trainer):
        compute_loss = trainer._compute_loss

        def recording(model, inputs):
            if not os.path.exists(os.environ["ABSCOT_PROBE_OUT"]):
                ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
                mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
                with torch.no_grad():
                    policy, _, _ = trainer._get_per_token_logps_and_entropies(
                        model, ids, mask, inputs["completion_ids"].size(1)
                    )
                keys = ("completion_ids", "completion_mask", "tool_mask", "ref_per_token_logps")
                seen = {k: inputs[k].detach().cpu() for k in keys}
                torch.save(seen | {"policy_per_token_logps": policy.cpu()}, os.environ["ABSCOT_PROBE_OUT"])
            return compute_loss(model, inputs)

        trainer._compute_loss = recording
