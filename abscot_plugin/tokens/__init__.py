"""Tokens and masks: the V_abs vocabulary in a tokenizer and a model, the extended tokenizer, the token
layout of Phase A/B rows and decode prefixes, and the segment codes the bottleneck mask is built from.
Imports no axolotl and no vLLM."""
