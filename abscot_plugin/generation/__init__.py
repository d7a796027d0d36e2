"""Constrained two-stage decoding (HF and vLLM) and teacher trace generation
(``python -m abscot_plugin.generation.generate``). Imports no axolotl; vLLM only where its engine is built."""
