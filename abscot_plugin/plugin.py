"""The axolotl plugin class: wires abscot's hooks; the work lives in the modules it calls.

* ``register``: extended tokenizer (``tokenizer_prep``), LoRA settings for ``full`` embeddings;
* ``post_model_build``: new V_abs rows initialised (``vocab``; DeepSpeed ZeRO-3 partitions too);
* ``post_model_load``: tied lm_head still tied (``vocab.check_tied``, gathered under ZeRO-3);
* ``get_trainer_cls``: abscot's trainer for both formats (loss-only logits; the bottleneck mask
  for Phase A: ``trainer``); other formats train with axolotl's own;
* ``get_collator_cls_and_kwargs``: Phase A's segment collator (``collator``); Phase B uses
  axolotl's;
* ``post_trainer_create``: the data summary: skipped rows by kind, CoT cuts (``dataset_strategy``);
  under ``rl: grpo``, the RL setup the rollout and the trainer's log-probs share (``rollout``,
  ``grpo_trainer``; the trainer comes from the YAML's ``trainer_cls``).
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from .args import GRPO_TRAINER, INPUT_ARGS, AbsCoTArgs, dataset_types, is_grpo, uses_bottleneck
from .core.choices import Phase

LOG = get_logger("axolotl.integrations.abscot")


class AbsCoTPlugin(BasePlugin):
    """Wires the abscot hooks into axolotl; the work lives in the modules named above."""

    def __init__(self):
        super().__init__()
        self.tokens_added = False
        self.tied = True
        self.vocab = None

    def get_input_args(self) -> str:
        return INPUT_ARGS

    def register(self, cfg: dict):
        from .tokens.tokenizer_prep import prepare_tokenizer

        args = AbsCoTArgs.model_validate({k: v for k, v in cfg.items() if k.startswith("abscot_")})
        path, self.tokens_added = prepare_tokenizer(cfg, args.abscot_num_symbols)
        cfg["tokenizer_config"] = path
        LOG.info("abscot: extended tokenizer at %s (new tokens: %s)", path, self.tokens_added)
        if cfg.get("adapter") in ("lora", "qlora") and args.abscot_lora_embeddings == "full":
            wanted = ["embed_tokens", "lm_head"]
            cfg["lora_modules_to_save"] = sorted(set(cfg.get("lora_modules_to_save") or []) | set(wanted))
            # peft ties a tied lm_head's copy to the embedding's (the reproduction lost the tie)
            cfg.setdefault("peft_ensure_weight_tying", True)

    def post_model_build(self, cfg, model):
        from transformers import AutoTokenizer

        from .tokens.vocab import AbstractVocab, embedding_rows, init_new_rows, is_tied

        vocab = AbstractVocab.from_tokenizer(
            AutoTokenizer.from_pretrained(cfg.tokenizer_config), cfg.abscot_num_symbols
        )
        rows = embedding_rows(model)
        if max(vocab.all_ids) >= rows:
            raise RuntimeError(f"abstract ids reach {max(vocab.all_ids)} but the embedding has {rows} rows")
        self.tied = is_tied(model)
        if self.tokens_added:
            init_new_rows(model, list(vocab.all_ids), cfg.abscot_init, cfg.abscot_init_seed)
            LOG.info("abscot: initialised %d new embedding rows (%s)", len(vocab.all_ids), cfg.abscot_init)
        self.vocab = vocab

    def get_lora_config_kwargs(self, cfg) -> dict:
        if cfg.abscot_lora_embeddings != "new_rows":
            return {}
        ids = list(self.vocab.all_ids)
        targets = {"embed_tokens": ids}
        if not self.tied:
            targets["lm_head"] = ids
        return {"trainable_token_indices": targets}

    def post_model_load(self, cfg, model):
        from .tokens.vocab import check_tied

        check_tied(model, list(self.vocab.all_ids))

    def get_trainer_cls(self, cfg):
        """abscot's trainer for abscot data (it reads Phase A from the config that axolotl hands
        it); axolotl's own trainer for other formats."""
        if not {phase.dataset_type for phase in Phase} & set(dataset_types(cfg)):
            return None
        from .train.trainer import AbsCoTTrainer

        return AbsCoTTrainer

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        if not uses_bottleneck(cfg):
            return None
        from .train.collator import SegmentCollator

        return SegmentCollator, {}

    def post_trainer_create(self, cfg, trainer):
        if is_grpo(cfg):
            self._setup_grpo(cfg, trainer)
            return
        from .train.dataset_strategy import log_data_summary

        log_data_summary(cfg, trainer.train_dataset)

    def _setup_grpo(self, cfg, trainer):
        from .core.choices import DEFAULT_HF_BATCH_SIZE
        from .rl.rollout import RLSetup
        from .train.grpo_trainer import AbsCoTGRPOTrainer

        if not isinstance(trainer, AbsCoTGRPOTrainer):
            raise RuntimeError(f"rl: grpo needs trainer_cls: {GRPO_TRAINER} (the trainer is {type(trainer).__name__})")
        trainer.abscot_rl = RLSetup.build(
            trainer.processing_class,
            cfg.abscot_num_symbols,
            cfg.abscot_rl_m_min,
            cfg.abscot_m_max,
            trainer.temperature,
            trainer.args.max_completion_length,
            trainer.args.seed,
            DEFAULT_HF_BATCH_SIZE,
        )
        setup = trainer.abscot_rl
        if cfg.abscot_rollout_server:
            from .rl.rollout_client import ServerRollouts

            trainer.abscot_server = ServerRollouts(cfg.abscot_rollout_server, cfg.abscot_rollout_timeout_s)
            LOG.info(
                "abscot GRPO: rollouts from the server at %s (weights synced each step)", cfg.abscot_rollout_server
            )
        LOG.info(
            "abscot GRPO: traces of %d..%d symbols at temperature %s, answers up to %d tokens, %d prompts",
            setup.trace.m_min,
            setup.trace.m_max,
            setup.trace.temperature,
            setup.answer_max_tokens,
            len(trainer.train_dataset),
        )
