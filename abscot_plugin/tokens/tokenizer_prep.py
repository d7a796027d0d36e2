"""Extended tokenizer prepared at config time, before axolotl loads any tokenizer.

axolotl has no tokenizer hook, so the plugin writes the base tokenizer plus V_abs to a folder and
points ``tokenizer_config`` at it; every process and every later ``load_tokenizer`` then sees the
same ids. The folder name carries a fingerprint of every abscot setting that changes tokenised
data, so axolotl's prepared-dataset cache (whose hash ignores plugin keys but includes the
tokenizer path) is invalidated when one of them changes.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from ..core.fileio import atomic_dir, file_digest, json_digest
from .vocab import add_abstract_tokens, has_abstract_tokens

# keys whose value changes the tokenised dataset
DATA_KEYS = (
    "abscot_num_symbols",
    "abscot_m_max",
    "abscot_trace_seed",
    "abscot_cot_keep",
    "abscot_skip_bad_rows",
    "abscot_id_field",
    "abscot_phase_a_layout",
)
# Version of the tokenised row layout this code writes. Bump it whenever the ids a row becomes
# change for the same settings (2: free text as plain text, Phase A reserves room for m_max), so
# that a dataset axolotl prepared with older code is not reused.
LAYOUT_VERSION = 2


def data_fingerprint(cfg: dict, source: str) -> str:
    """Hash of the tokenizer source, the data-shaping abscot keys, the trace file's bytes and the
    row layout's version."""
    payload = {"source": source, "layout": LAYOUT_VERSION, **{k: cfg.get(k) for k in DATA_KEYS}}
    if cfg.get("abscot_trace_file"):
        payload["trace_file"] = file_digest(cfg["abscot_trace_file"])
    return json_digest(payload, 16)


def prepare_tokenizer(cfg: dict, num_symbols: int) -> tuple[str, bool]:
    """Write the extended tokenizer for ``cfg``; returns (its folder, whether tokens were new)."""
    source = cfg.get("tokenizer_config") or cfg.get("base_model_config") or cfg["base_model"]
    kwargs = {"trust_remote_code": bool(cfg.get("trust_remote_code"))}
    if cfg.get("revision_of_model"):
        kwargs["revision"] = cfg["revision_of_model"]
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    added = not has_abstract_tokens(tokenizer, num_symbols)
    add_abstract_tokens(tokenizer, num_symbols)
    root = Path(cfg.get("dataset_prepared_path") or cfg.get("output_dir") or "./outputs")
    target = root / f"abscot_tokenizer_{data_fingerprint(cfg, str(source))}"
    if not (target / "tokenizer_config.json").exists():
        # several ranks may race here with the same content: the first to publish wins
        with atomic_dir(target, exist_ok=True) as tmp:
            tokenizer.save_pretrained(tmp)
    return str(target), added
