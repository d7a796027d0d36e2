"""What runs inside axolotl's training processes: the dataset formats (``bottleneck``, ``self_distill``),
skipped-row counts, the collator, the trainer (bottleneck mask, loss-only logits) and the GRPO trainer."""
