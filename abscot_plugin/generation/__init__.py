"""Constrained two-stage decoding (``decode``, ``samplers``, ``hf_decoder``, ``vllm_decoder``), the one
vLLM engine builder and HF loader (``engines``), and teacher trace generation (``prefixes``, ``runner``,
the CLI ``python -m abscot_plugin.generation.generate``). Imports no axolotl; vLLM only where its engine
is built."""
