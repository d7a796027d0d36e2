"""Checkpoints: LoRA merging and extending a base model with V_abs. Imports no axolotl."""
