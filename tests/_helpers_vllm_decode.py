"""Runs in the vLLM environment (.venv-vllm): decodes with VLLMDecoder and prints JSON.

    .venv-vllm/bin/python tests/_helpers_vllm_decode.py MODEL_DIR REQUEST.json RESULT.json

REQUEST: {"prefixes": [[ids]], "settings": [{TraceSettings kwargs}, ...], "greedy_settings":
{...}, "answer_max_tokens": N}. Prints {"traces": [[[ids]] per settings], "greedy": [[ids]],
"two_stage": [{"trace", "answer"}]} to RESULT.json (vLLM prints to stdout). The test compares this with HFDecoder.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from transformers import AutoTokenizer
    from vllm import LLM

    from abscot_plugin.decode import TraceSettings, VLLMDecoder, two_stage
    from abscot_plugin.sequences import SequenceBuilder
    from abscot_plugin.vocab import AbstractVocab

    model_dir, request_path, result_path = sys.argv[1:4]
    request = json.loads(open(request_path, encoding="utf-8").read())
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = AbstractVocab.from_tokenizer(tok, 64)
    llm = LLM(model=model_dir, dtype="float32", max_model_len=1024, seed=0, enforce_eager=True)
    decoder = VLLMDecoder(llm, vocab)
    prefixes = request["prefixes"]
    result = {
        "traces": [decoder.traces(prefixes, TraceSettings(**kw)) for kw in request["settings"]],
        "greedy": decoder.traces(prefixes, TraceSettings(**request["greedy_settings"])),
    }
    builder = SequenceBuilder(tok, vocab)
    outs = two_stage(
        decoder, prefixes, TraceSettings(**request["greedy_settings"]), request["answer_max_tokens"],
        [builder.end_of_turn], builder,
    )
    result["two_stage"] = [{"trace": o.trace, "answer": o.answer} for o in outs]
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
