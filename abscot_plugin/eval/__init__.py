"""Evaluation: the lm-eval model classes, the ``abscot-eval`` entry point, answer scoring and the report.
Imports no axolotl; ``eval_cli``, ``scoring`` and ``report`` no torch either (the orchestrator reads them)."""
