"""One rank of test_zero3's multi-rank check (run with RANK, WORLD_SIZE, MASTER_ADDR/PORT set):

    python tests/zero3_worker.py MODEL_DIR UNTIED_DIR IDS_JSON OUT_DIR

Loads MODEL_DIR partitioned by DeepSpeed ZeRO-3 (``zero.Init``, gloo backend on CPU), runs the
plugin's vocabulary helpers on it, and saves to OUT_DIR/rank<r>.pt what this rank saw: the
embedding's local shape and ``embedding_rows``, this rank's shard of the embedding after
``init_new_rows`` (its context exited), and whether ``check_tied`` passed on the tied model and
caught a model whose config claims a tie its lm_head does not have (UNTIED_DIR: the same model
saved untied, its lm_head filled with other values, loaded partitioned like MODEL_DIR; after
``init_new_rows``, the new rows of both its matrices as ``gathered`` reads them).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    model_dir, untied_dir, ids_path, out_dir = sys.argv[1:5]
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from abscot_plugin.tokens.vocab import check_tied, embedding_rows, gathered, init_new_rows

    deepspeed.init_distributed(dist_backend="gloo")
    # from_pretrained builds under zero.Init while this lives (transformers holds it weakly)
    ds_config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    ids = json.loads(Path(ids_path).read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    weight = model.get_input_embeddings().weight
    seen = {"zero3": ds_config.is_zero3(), "shape": tuple(weight.shape), "rows": embedding_rows(model)}
    init_new_rows(model, ids, "random", seed=0)
    seen["shard"] = weight.ds_tensor.detach().clone()
    check_tied(model, ids)
    seen["tied_ok"] = True

    # built from saved weights, not from_config: zero.Init may leave a from_config model's weights as
    # allocated, and a write under GatheredParameters to one of two gathered matrices did not always
    # persist (the CI flake of this test)
    untied = AutoModelForCausalLM.from_pretrained(untied_dir)
    init_new_rows(untied, ids, "random", seed=0)  # writes the embedding's rows, then lm_head's
    pair = [untied.get_input_embeddings().weight, untied.get_output_embeddings().weight]
    with gathered(pair):  # both read in one context, as check_tied does
        seen["untied_rows"] = [param[ids].detach().clone() for param in pair]
    untied.config.tie_word_embeddings = True  # claims a tie its separate lm_head does not have
    try:
        check_tied(untied, ids)
        seen["untied_error"] = None
    except RuntimeError as exc:
        seen["untied_error"] = str(exc)
    torch.save(seen, Path(out_dir) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()
