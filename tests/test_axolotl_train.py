"""`axolotl train` end to end on the tiny model: Phase A (bottleneck) then Phase B (self-distill)
from the merged Phase A model, LoRA with trainable V_abs rows (new rows move, old rows do not);
skipped rows totalled by `axolotl preprocess` and read back from its cache by `axolotl train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import run_axolotl, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from abscot_plugin.core.symbols import symbol_names
from abscot_plugin.tokens.vocab import AbstractVocab, check_tied


def embeddings(model_dir: Path) -> torch.Tensor:
    return AutoModelForCausalLM.from_pretrained(model_dir).get_input_embeddings().weight.detach().clone()


@pytest.mark.slow
def test_phase_a_then_phase_b_train_new_rows_only(tiny_dir, dolci_rows, tmp_path):
    from abscot_plugin.checkpoints.merge import merge_adapter

    base_rows = embeddings(tiny_dir)

    # Phase A: random round-1 traces, bottleneck mask
    out_a = tmp_path / "phase_a"
    proc = run_axolotl(tiny_config("a", tiny_dir, out_a, tmp_path), tmp_path, "phase_a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "abscot: initialised 66 new embedding rows (random)" in log
    assert "abscot bottleneck data: 48 rows; CoT cut to fit sequence_len in" in log
    adapter = json.loads((out_a / "adapter_config.json").read_text())
    vocab = AbstractVocab.from_tokenizer(AutoTokenizer.from_pretrained(out_a))
    assert sorted(adapter["trainable_token_indices"]["embed_tokens"]) == sorted(vocab.all_ids)
    weights = load_file(out_a / "adapter_model.safetensors")
    assert not any("embed_tokens.weight" in k and "trainable_tokens" not in k for k in weights)

    merged_a = merge_adapter(out_a, tmp_path / "merged_a")
    rows_a = embeddings(merged_a)
    new = list(vocab.all_ids)
    old = torch.ones(rows_a.shape[0], dtype=torch.bool)
    old[new] = False
    assert torch.equal(rows_a[old], base_rows[old])
    assert not torch.allclose(rows_a[new], base_rows[new])
    check_tied(AutoModelForCausalLM.from_pretrained(merged_a), new)

    # Phase B: traces from a file (as generation writes them), from the merged Phase A model
    traces = tmp_path / "traces.jsonl"
    names = symbol_names(64)
    traces.write_text(
        "".join(
            json.dumps({"id": r["id"], "trace": "".join(names[(i + k) % 64] for k in range(16))}) + "\n"
            for i, r in enumerate(dolci_rows)
        )
    )
    out_b = tmp_path / "phase_b"
    cfg_b = tiny_config("b", merged_a, out_b, tmp_path, abscot_trace_file=str(traces))
    proc = run_axolotl(cfg_b, tmp_path, "phase_b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the merged model already has V_abs: its trained rows are kept, not re-initialised
    assert "initialised 66 new embedding rows" not in proc.stdout + proc.stderr
    rows_b = embeddings(merge_adapter(out_b, tmp_path / "merged_b"))
    assert torch.equal(rows_b[old], base_rows[old])
    assert not torch.allclose(rows_b[new], rows_a[new])


@pytest.mark.slow
def test_dataset_format_without_the_plugin_fails_loudly(tiny_dir, tmp_path):
    cfg = tiny_config("a", tiny_dir, tmp_path / "out", tmp_path)
    cfg.pop("plugins")
    for key in [k for k in cfg if k.startswith("abscot_")]:
        cfg.pop(key)
    proc = run_axolotl(cfg, tmp_path, "no_plugin")
    assert proc.returncode != 0
    assert "need the abscot plugin" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_skipped_rows_are_totalled_once_and_read_back_from_the_cache(tiny_dir, dolci_rows, tmp_path):
    """`axolotl preprocess` with two tokenising processes logs one total of the skipped rows by
    kind; `axolotl train` then loads the prepared dataset from the cache and logs the same total."""

    def chat(reply: str) -> list[dict]:
        return [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}]

    bad = [
        {"id": "bad-1", "messages": chat("no think block")},
        {"id": "bad-2", "messages": chat("<think>c</think>  ")},
        {"id": "bad-3", "messages": chat("<think>c</think>" + " word" * 400)},
        {"id": "bad-4", "messages": chat("<think>c</think>a"), "abstract_trace": "<TOKEN_A> hello"},
        {"id": "bad-5", "messages": chat("also no think block")},
    ]
    rows = bad[:3] + dolci_rows + bad[3:]  # bad rows in both halves: both processes skip some
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(
        "a", tiny_dir, tmp_path / "out", tmp_path, abscot_skip_bad_rows=True, dataset_num_proc=2, max_steps=1
    )
    cfg["datasets"][0]["path"] = str(data)
    total = "skipped 5 of 53 rows: 2× no_think, 1× bad_trace, 1× empty_answer, 1× too_long"

    proc = run_axolotl(cfg, tmp_path, "preprocess", command="preprocess")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "abscot bottleneck data" in line]
    assert len(lines) == 1 and lines[0].endswith(f"abscot bottleneck data from {data}: {total}")

    proc = run_axolotl(cfg, tmp_path, "train")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Loading prepared dataset from disk" in log and "Tokenizing Prompts" not in log
    lines = [line for line in log.splitlines() if "abscot bottleneck data: skipped" in line]
    assert len(lines) == 1 and lines[0].endswith(f"abscot bottleneck data: {total}")
    assert "abscot bottleneck data: 48 rows; CoT cut to fit sequence_len in" in log
