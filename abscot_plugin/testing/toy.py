"""A toy reasoning task on which Abstract-CoT can be measured on a CPU in minutes (docs/toy_study.md).

State tracking in the symmetric group S4: four values start as ``1234``; the problem lists k
labelled swaps of two *values*, the answer is the final arrangement as a number, and the verbal
CoT writes the arrangement after each swap. A shallow model without any CoT has to compose k
permutations in one pass; with the CoT each step is a local rewrite of the line before. S4 has
24 states, fewer than the 64 abstract symbols, so an ideal abstract trace is one symbol per step.

One problem with k = 3::

    problem  Swap the values in 1234: a13 b24 c12.
    CoT      a13 3214            (1 and 3 trade places)
             b24 3412
             c12 3421
    answer   \\boxed{3421}

Rows come out in the formats the pipeline already reads, so it runs on them unchanged:

* ``dolci.jsonl`` — Dolci-Think rows (``id``, ``messages``: the MATH system prompt, the problem,
  ``<think>CoT</think>`` and the boxed answer) for Phase A/B and ``orchestrate.py``;
* ``valid.jsonl``, ``test.jsonl`` — MATH-500 rows (``problem``, ``answer``, ``unique_id``) for the
  lm-eval tasks (``evaluation.data_files.math500_file``), disjoint from the training problems;
* ``oracle_traces.jsonl`` — a trace file (``id``, ``trace``) of the training rows holding the ideal
  trace (:meth:`Problem.oracle_trace`): the study's upper reference for Phase B;
* ``verbal.jsonl``, ``nocot.jsonl`` — axolotl ``input_output`` rows (with ``--tokenizer``): the
  prompt exactly as evaluation builds it (:func:`~abscot_plugin.core.prompts.prompt_text`, thinking
  off), then the CoT and the answer, or the answer alone; these train the verbal-CoT base model
  and the no-CoT baseline.

Everything is a function of ``--seed``. The model builder writes a tiny random Qwen3
(:func:`abscot_plugin.testing.fixtures.build_tiny`) whose byte-level BPE is trained on this task's text,
with Qwen3's special tokens and chat template (digits stay one token each)::

    python -m abscot_plugin.testing.toy model build/toy/init --layers 2 --seed 0
    python -m abscot_plugin.testing.toy data build/toy/data --k 8 --tokenizer build/toy/init
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.prompts import END_OF_TURN, MATH_SYSTEM_PROMPT, math_messages
from ..core.symbols import symbol_name

START = (1, 2, 3, 4)
SWAPS = tuple((a, b) for a in START for b in START if a < b)  # the 6 transpositions of values
LABELS = string.ascii_lowercase  # swap labels: at most 26 swaps per problem
TOY_BPE_VOCAB = 384  # byte alphabet + the task's words: enough merges for every word to be one token
SPLITS = ("test", "valid", "train")  # drawn in this order: earlier splits are held out of later ones
STATES = tuple("".join(map(str, p)) for p in itertools.permutations(START))  # the 24 arrangements, sorted
# accuracy of a uniform guess among the reachable answers: k swaps (transpositions) give a
# permutation of k's parity, so only 12 of the 24 arrangements can be the answer
CHANCE = 2 / len(STATES)


def _digits(state: tuple[int, ...]) -> str:
    return "".join(map(str, state))


@dataclass(frozen=True)
class Problem:
    """k value swaps applied to ``1234``, in order."""

    swaps: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.swaps) <= len(LABELS):
            raise ValueError(f"a problem has 1..{len(LABELS)} swaps, got {len(self.swaps)}")
        bad = [s for s in self.swaps if s not in SWAPS]
        if bad:
            raise ValueError(f"swaps must be pairs a < b of values in 1..4, got {bad[:3]}")

    @classmethod
    def from_text(cls, text: str) -> Problem:
        """The problem whose :meth:`text` is ``text`` (e.g. an evaluation row's ``problem``)."""
        head = f"Swap the values in {_digits(START)}: "
        ops = text.removeprefix(head).removesuffix(".").split(" ")
        if not text.startswith(head) or any(len(op) != 3 or not op[1:].isdigit() for op in ops):
            raise ValueError(f"not a toy problem: {text[:80]!r}")
        problem = cls(tuple((int(op[1]), int(op[2])) for op in ops))
        if problem.text() != text:
            raise ValueError(f"not a toy problem: {text[:80]!r}")
        return problem

    def states(self) -> list[str]:
        """The arrangement after each swap (the verbal CoT's content)."""
        state, out = START, []
        for a, b in self.swaps:
            state = tuple(b if v == a else a if v == b else v for v in state)
            out.append(_digits(state))
        return out

    @property
    def answer(self) -> str:
        """The final arrangement, e.g. ``"3421"`` (the gold answer; a number to the scorer)."""
        return self.states()[-1]

    def _ops(self) -> list[str]:
        return [f"{LABELS[i]}{a}{b}" for i, (a, b) in enumerate(self.swaps)]

    def text(self) -> str:
        """The problem statement (the user turn)."""
        return f"Swap the values in {_digits(START)}: " + " ".join(self._ops()) + "."

    def cot(self) -> str:
        """The verbal CoT: one line per swap, the swap then the arrangement after it."""
        return "\n".join(f"{op} {state}" for op, state in zip(self._ops(), self.states(), strict=True))

    def boxed(self) -> str:
        """The assistant's final answer y."""
        return f"\\boxed{{{self.answer}}}"

    def oracle_trace(self) -> str:
        """The ideal abstract trace: one symbol per swap naming the arrangement after it (the i-th
        of :data:`STATES` is the i-th abstract symbol), e.g. ``<TOKEN_O><TOKEN_Q>`` for 3214, 3412."""
        return "".join(symbol_name(STATES.index(state)) for state in self.states())


def draw(k: int, rng: random.Random) -> Problem:
    """One problem with ``k`` uniformly random swaps."""
    return Problem(tuple(rng.choice(SWAPS) for _ in range(k)))


def splits(k: int, sizes: dict[str, int], seed: int) -> dict[str, list[Problem]]:
    """Distinct problems per split (:data:`SPLITS` order), none shared between splits; the same
    ``seed`` gives the same problems, and a split's problems do not depend on later splits' sizes.

    Raises ValueError when k is not 1..26, a size is negative, or k is too small for that many
    distinct problems."""
    if not 1 <= k <= len(LABELS):
        raise ValueError(f"a problem has 1..{len(LABELS)} swaps, got k={k}")
    negative = {name: n for name, n in sizes.items() if n < 0}
    if negative:
        raise ValueError(f"split sizes must not be negative, got {negative}")
    rng = random.Random(seed)
    seen: set[Problem] = set()
    out: dict[str, list[Problem]] = {}
    for name in SPLITS:
        want = sizes.get(name, 0)
        if len(seen) + want > len(SWAPS) ** k // 2:
            raise ValueError(f"k={k} has {len(SWAPS) ** k} problems: too few for {len(seen) + want} distinct ones")
        rows: list[Problem] = []
        while len(rows) < want:
            problem = draw(k, rng)
            if problem not in seen:
                seen.add(problem)
                rows.append(problem)
        out[name] = rows
    return out


def dolci_row(problem: Problem, row_id: str) -> dict:
    """A Dolci-Think row: system prompt, problem, ``<think>`` CoT and the boxed answer."""
    reply = f"<think>\n{problem.cot()}\n</think>\n\n{problem.boxed()}"
    return {"id": row_id, "messages": [*math_messages(problem.text()), {"role": "assistant", "content": reply}]}


def math500_row(problem: Problem, row_id: str) -> dict:
    """A MATH-500-format evaluation row (``problem``, ``answer``, ``unique_id``)."""
    return {"problem": problem.text(), "answer": problem.answer, "unique_id": row_id}


def sft_row(prompt: str, problem: Problem, row_id: str, with_cot: bool) -> dict:
    """An axolotl ``input_output`` row: ``prompt`` (no loss), then the CoT (``with_cot``) and the
    boxed answer and end of turn (loss)."""
    target = (problem.cot() + "\n" if with_cot else "") + problem.boxed() + END_OF_TURN
    return {"id": row_id, "segments": [{"label": False, "text": prompt}, {"label": True, "text": target}]}


def corpus(k_max: int = len(LABELS), rows: int = 200, seed: int = 0) -> Iterator[str]:
    """Text of the task for the tokenizer, as often as rows hold it: the chat roles, the system
    prompt, problems, CoTs and answers of every length up to ``k_max`` (every swap label)."""
    rng = random.Random(seed)
    for index in range(rows):
        problem = draw(1 + index % k_max, rng)
        yield from ("system", "user", "assistant", MATH_SYSTEM_PROMPT, problem.text(), problem.cot(), problem.boxed())


def build_model(out_dir: str | Path, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random Qwen3 (:func:`abscot_plugin.testing.fixtures.build_tiny`) with a BPE tokenizer trained
    on :func:`corpus` (Qwen3's special tokens and chat template), written to ``out_dir``."""
    from .fixtures import build_tiny, build_tokenizer

    return build_tiny(out_dir, layers=layers, seed=seed, tokenizer=build_tokenizer(corpus(), TOY_BPE_VOCAB))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_data(
    out_dir: str | Path, k: int, sizes: dict[str, int], seed: int = 0, tokenizer: str | Path | None = None
) -> dict[str, Path]:
    """Write the task's files (module docstring) to ``out_dir``; returns name -> path.

    Row ids are ``toy-<split>-<index>``. ``tokenizer`` (a folder): also the ``input_output`` files
    of the train split, whose prompts are rendered with that tokenizer's chat template."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problems = splits(k, sizes, seed)
    ids = {name: [f"toy-{name}-{i:06d}" for i in range(len(rows))] for name, rows in problems.items()}
    train = list(zip(problems["train"], ids["train"], strict=True))
    files = {
        "dolci": out / "dolci.jsonl",
        "oracle": out / "oracle_traces.jsonl",
        "valid": out / "valid.jsonl",
        "test": out / "test.jsonl",
    }
    _write_jsonl(files["dolci"], [dolci_row(p, i) for p, i in train])
    _write_jsonl(files["oracle"], [{"id": i, "trace": p.oracle_trace()} for p, i in train])
    for name in ("valid", "test"):
        _write_jsonl(files[name], [math500_row(p, i) for p, i in zip(problems[name], ids[name], strict=True)])
    if tokenizer is not None:
        from transformers import AutoTokenizer

        from ..core.prompts import prompt_text

        tok = AutoTokenizer.from_pretrained(tokenizer)
        prompts = [prompt_text(tok, math_messages(p.text())) for p, _ in train]
        for name, with_cot in (("verbal", True), ("nocot", False)):
            files[name] = out / f"{name}.jsonl"
            _write_jsonl(files[name], [sft_row(x, p, i, with_cot) for x, (p, i) in zip(prompts, train, strict=True)])
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m abscot_plugin.testing.toy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    model = sub.add_parser("model", help="tiny random Qwen3 + a tokenizer trained on the task's text")
    model.add_argument("out_dir")
    model.add_argument("--layers", type=int, default=2)
    model.add_argument("--seed", type=int, default=0)
    data = sub.add_parser(
        "data", help="the task's files: dolci.jsonl, oracle_traces.jsonl, valid/test.jsonl (+ verbal/nocot.jsonl)"
    )
    data.add_argument("out_dir")
    data.add_argument("--k", type=int, default=8, help="swaps per problem")
    data.add_argument("--train", type=int, default=20000, help="training rows")
    data.add_argument("--valid", type=int, default=256, help="validation problems")
    data.add_argument("--test", type=int, default=256, help="held-out test problems")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--tokenizer", default=None, help="model folder: also write verbal.jsonl and nocot.jsonl")
    args = parser.parse_args(argv)
    if args.cmd == "model":
        print(build_model(args.out_dir, args.layers, args.seed))
        return
    try:
        files = write_data(
            args.out_dir,
            args.k,
            {"train": args.train, "valid": args.valid, "test": args.test},
            args.seed,
            args.tokenizer,
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    for name, path in files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
