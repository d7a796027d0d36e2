"""Where the toy study's answer signal is lost (docs/toy_study.md): teacher-forced probes of one
warm-up round's Phase A and Phase B models on the held-out ``valid`` problems.

    python studies/toy/probe.py --cells one_pass,split --seeds 0,1,2 --round 1

For each problem, its Dolci row is rebuilt by :mod:`abscot_plugin.testing.toy` (x, the verbal CoT c, the
answer y) and laid out by :class:`~abscot_plugin.tokens.sequences.SequenceBuilder`, as in training. The
trace z_c is sampled by the round's Phase A model from the teacher prefix x c ``<beginabstract>``
with the run's generation settings. Each probe is the share of problems whose whole answer
``\\n \\boxed{dddd} <|im_end|>`` is the argmax at every answer position (teacher-forced):

* ``a_own``: the Phase A model on x c z_c y under the bottleneck mask (the answer cannot attend to
  c): does c reach the answer through the hidden states at z? (A split Phase A model,
  ``abscot_phase_a_layout: split``, is probed on the layout its answer trained on, x z_c y.)
* ``a_other``: the same with c (and y) taken from the next problem while z_c is kept: the share
  that gives the next problem's answer, i.e. what crosses from c alone;
* ``b_teacher``: the Phase B model on x z_c y (no c): do the symbols sampled with c carry the
  answer to a model that only reads them?
* ``b_own``: the Phase B model on x z_b y, z_b its own trace from x (what the two-stage decode does).

Chance is about 1/12 (:data:`abscot_plugin.testing.toy.CHANCE`). Results: one
``<study>/probes/<cell>_s<seed>_r<t>.json`` per model pair, and the table of every probe measured
so far, ``<study>/probes/probes.md``. ``--phase-a-config YAML`` probes a Phase A model trained
outside the study's runs (``a_own``, ``a_other``; written beside the YAML as ``*.probe.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from abscot_plugin.args import RowLayout  # noqa: E402
from abscot_plugin.core.choices import Phase  # noqa: E402
from abscot_plugin.core.rows import ReasoningRow, parse_chat_row  # noqa: E402
from abscot_plugin.core.traces import TraceSettings  # noqa: E402
from abscot_plugin.generation.hf_decoder import HFDecoder  # noqa: E402
from abscot_plugin.testing.toy import CHANCE, Problem, dolci_row  # noqa: E402
from abscot_plugin.tokens import segments as seg  # noqa: E402
from abscot_plugin.tokens.segments import bottleneck_attention_mask  # noqa: E402
from abscot_plugin.tokens.sequences import IGNORE, Example, SequenceBuilder  # noqa: E402
from abscot_plugin.tokens.vocab import AbstractVocab  # noqa: E402
from studies.toy.report import CELL_TITLES  # noqa: E402
from studies.toy.study import RUN_CONFIG  # noqa: E402

PROBES = ("a_own", "a_other", "b_teacher", "b_own")


@torch.no_grad()
def answer_right(model, examples: list[Example], batch_size: int = 64) -> list[bool]:
    """Per example: is every labelled answer token the argmax of the position before it, with the
    example's segments as the attention mask (the bottleneck when it has a CoT, else causal)?"""
    right = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        segs = torch.full((len(batch), width), seg.PAD, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        for i, e in enumerate(batch):
            answer = [lab if s == seg.ANSWER else IGNORE for lab, s in zip(e.labels, e.segment_ids, strict=True)]
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            segs[i, : len(e.input_ids)] = torch.tensor(e.segment_ids)
            labels[i, : len(e.input_ids)] = torch.tensor(answer)
        mask = bottleneck_attention_mask(model.config, segs, torch.float32)
        predicted = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        ok = (predicted == target) | (target == IGNORE)
        right += ok.all(-1).tolist()
    return right


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def valid_rows(study: Path, limit: int) -> tuple[list[ReasoningRow], list[ReasoningRow]]:
    """The valid problems as Dolci rows, and each with the next problem's CoT and answer in place of
    its own (its prompt kept: only c and y are swapped)."""
    lines = (study / "data" / "valid.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    problems = [Problem.from_text(json.loads(line)["problem"]) for line in lines]
    rows = [parse_chat_row(dolci_row(p, f"valid-{i}"), f"valid-{i}") for i, p in enumerate(problems)]
    nxt = rows[1:] + rows[:1]
    return rows, [ReasoningRow(o.row_id, r.messages, o.cot, o.answer) for r, o in zip(rows, nxt, strict=True)]


class Prober:
    """The probes of one Phase A model (and of a Phase B model after it) on the valid problems."""

    def __init__(self, study: Path, phase_a_yaml: Path, settings: TraceSettings, limit: int):
        self.rows, self.others = valid_rows(study, limit)
        self.settings = settings
        cfg = yaml.safe_load(phase_a_yaml.read_text(encoding="utf-8"))
        self.phase_a_dir = Path(cfg["output_dir"])
        self.layout = RowLayout.from_cfg(cfg)
        self.num_symbols = cfg["abscot_num_symbols"]
        # a split Phase A model trained its answer on [x; z; y] (pass 2): probe it on that layout
        self.answer_phase = Phase.B if cfg.get("abscot_phase_a_layout") == "split" else Phase.A
        self.z_c: list[list[int]] = []

    def examples(self, builder: SequenceBuilder, rows: list[ReasoningRow], traces, phase: Phase) -> list[Example]:
        return [builder.example(r, z, phase, self.layout) for r, z in zip(rows, traces, strict=True)]

    def phase_a(self) -> dict[str, float]:
        """``a_own`` and ``a_other``; keeps z_c for :meth:`phase_b`."""
        model, tok = load(self.phase_a_dir)
        builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, self.num_symbols))
        prefixes = [builder.phase_a_prefix(r, self.layout)[0] for r in self.rows]
        self.z_c = HFDecoder(model, tok, builder.vocab, batch_size=64).traces(prefixes, self.settings)
        own = answer_right(model, self.examples(builder, self.rows, self.z_c, self.answer_phase))
        follows = answer_right(model, self.examples(builder, self.others, self.z_c, self.answer_phase))
        differs = [r.answer != o.answer for r, o in zip(self.rows, self.others, strict=True)]
        other = [f for f, d in zip(follows, differs, strict=True) if d]
        return {"a_own": statistics.fmean(own), "a_other": statistics.fmean(other), "n": len(self.rows)}

    def phase_b(self, model_dir: Path) -> dict[str, float]:
        """``b_teacher`` and ``b_own`` of the Phase B model in ``model_dir`` (after :meth:`phase_a`)."""
        model, tok = load(model_dir)
        builder = SequenceBuilder(tok, AbstractVocab.from_tokenizer(tok, self.num_symbols))
        teacher = answer_right(model, self.examples(builder, self.rows, self.z_c, Phase.B))
        prefixes = [builder.phase_b_prefix(r) for r in self.rows]
        z_b = HFDecoder(model, tok, builder.vocab, batch_size=64).traces(prefixes, self.settings)
        own = answer_right(model, self.examples(builder, self.rows, z_b, Phase.B))
        return {"b_teacher": statistics.fmean(teacher), "b_own": statistics.fmean(own)}


def trace_settings(generation: dict, seed: int) -> TraceSettings:
    """Stage-1 settings of a run config's ``generation`` section, seeded with ``seed``."""
    return TraceSettings(
        m_min=generation["m_min"], m_max=generation["m_max"], temperature=generation["temperature"], seed=seed
    )


def probe_round(study: Path, cell: str, seed: int, t: int, limit: int) -> dict[str, float]:
    """The four probes of round ``t`` of ``cell`` for ``seed``, with the run's generation settings."""
    gen = yaml.safe_load((study / "runs" / f"{cell}_s{seed}.yml").read_text(encoding="utf-8"))["generation"]
    settings = trace_settings(gen, seed)
    round_dir = study / "runs" / f"{cell}_s{seed}" / f"round{t}"
    prober = Prober(study, round_dir / "phase_a" / "axolotl.yml", settings, limit)
    return prober.phase_a() | prober.phase_b(round_dir / "phase_b" / "train")


def table(results: dict[tuple[str, int], list[dict]]) -> str:
    """Markdown: one line per (cell, round), each probe as mean ± sd over the seeds, in %."""
    lines = [
        "| cell | round | seeds | A: own CoT | A: next problem's CoT (follows it) | B: teacher trace z_c "
        "| B: own trace |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for (cell, t), runs in results.items():
        cells = []
        for name in PROBES:
            values = [100 * r[name] for r in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.1f} ± {sd:.1f}")
        lines.append(f"| {CELL_TITLES[cell]} | {t} | {len(runs)} | " + " | ".join(cells) + " |")
    note = f"Teacher-forced whole-answer accuracy on the valid problems; chance about {100 * CHANCE:.1f} %."
    return "\n".join(lines) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=ROOT / "build" / "toy_study", help="the study's --out")
    parser.add_argument("--cells", default="one_pass", help=f"of {list(CELL_TITLES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", default="1", help="e.g. 1,2,3")
    parser.add_argument("--limit", type=int, default=256, help="valid problems to probe")
    parser.add_argument(
        "--phase-a-config",
        type=Path,
        default=None,
        help="instead: the Phase A probes of the model this axolotl YAML trained (its output_dir), "
        "traces as configs/runs/toy.yml's generation settings with the YAML's seed",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a shared CPU
    if args.phase_a_config:
        gen = yaml.safe_load(RUN_CONFIG.read_text(encoding="utf-8"))["generation"]
        seed = yaml.safe_load(args.phase_a_config.read_text(encoding="utf-8")).get("seed", 0)
        settings = trace_settings(gen, seed)
        result = Prober(args.study, args.phase_a_config, settings, args.limit).phase_a()
        print(json.dumps(result))
        args.phase_a_config.with_suffix(".probe.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        return
    folder = args.study / "probes"
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], list[dict]] = {}
    for cell in args.cells.split(","):
        if cell not in CELL_TITLES:
            parser.error(f"unknown cell {cell!r}; known: {list(CELL_TITLES)}")
        for t in map(int, args.rounds.split(",")):
            for seed in map(int, args.seeds.split(",")):
                path = folder / f"{cell}_s{seed}_r{t}.json"
                if not path.exists():
                    result = probe_round(args.study, cell, seed, t, args.limit)
                    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
                result = json.loads(path.read_text(encoding="utf-8"))
                print(f"{cell} s{seed} r{t}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    # the table holds every probe measured so far, in the study's cell order
    for cell in CELL_TITLES:
        for path in sorted(folder.glob(f"{cell}_s*_r*.json"), key=lambda p: int(p.stem.rsplit("_r", 1)[1])):
            t = int(path.stem.rsplit("_r", 1)[1])
            results.setdefault((cell, t), []).append(json.loads(path.read_text(encoding="utf-8")))
    text = table(results)
    (folder / "probes.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
