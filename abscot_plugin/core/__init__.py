"""Names and plain data every stage shares: choices and defaults, V_abs symbol names, Dolci rows, prompts,
traces and their file format, atomic files, child processes. Imports no torch, axolotl or vLLM."""
