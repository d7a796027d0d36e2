"""The T-round Abstract-CoT warm-up (and an optional RL stage after it) as a resumable pipeline of
subprocess stages.

Data flow (each module imports only those above it)::

    run_config   the one YAML run config, validated (ConfigError, PlanError)
    schedule     a training stage's optimizer steps and warm-up, as axolotl (SFT) and TRL (GRPO) derive them
    training     a training stage's generated axolotl YAML, checked
    rl           the RL stage's prompt slice, generated GRPO YAML and schedule
    trace_settings  the run's trace settings (generation): written into the training YAMLs and the
                 evaluations, checked once against what they state
    commands     the command line of each stage kind (train, merge, traces, eval)
    manifest     finished stages and the fingerprints of their inputs
    slices       the data slices, planned and written as streams (offsets, digests, row names)
    plan         the stage graph: stages, data slices, fingerprints, statuses
    curves       the trainer's TensorBoard logs: loss, learning rate (GRPO: rewards, KL), plots, the
                 schedule checks
    summary      the dry-run listing, SUMMARY.md, the evaluation report
    checks       what each finished stage must have written, by kind
    runner       execution: resume, subprocesses and signals, the run-folder lock

The command line is ``orchestrate.py`` at the repository root. Nothing here imports torch,
transformers or axolotl, at import time or while planning (tests/test_boundaries.py): stages run
them in their own processes. How to add a stage kind: :mod:`.commands`.
"""
