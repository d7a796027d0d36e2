"""The T-round Abstract-CoT warm-up as a resumable pipeline of subprocess stages.

``run_config`` validates the one YAML run config, ``plan`` turns it into stages (commands,
generated axolotl YAMLs, input fingerprints), ``schedule`` derives a training stage's optimizer
steps and warm-up, ``manifest`` records finished stages,
``curves`` reads the trainer's logs (plots, learning-rate check) and ``runner`` executes the
plan. The command line is ``orchestrate.py`` at the repository root. Nothing here imports torch,
transformers or axolotl, at import time or while planning (tests/test_boundaries.py): stages run
them in their own processes.
"""
