"""The abstract vocabulary V_abs in a tokenizer and a model: its ids, tokenizer extension, new-row
initialisation and the tie check.

Each name of :mod:`abscot_plugin.core.symbols` becomes one special token id that ordinary text never
produces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.choices import DEFAULT_INIT, DEFAULT_INIT_SEED, InitMethod
from ..core.symbols import DEFAULT_NUM_SYMBOLS, all_token_names


@dataclass(frozen=True)
class AbstractVocab:
    """Token ids of the abstract vocabulary in one tokenizer."""

    symbols: tuple[str, ...]
    symbol_ids: tuple[int, ...]
    begin_id: int
    end_id: int

    @property
    def all_ids(self) -> tuple[int, ...]:
        return self.symbol_ids + (self.begin_id, self.end_id)

    @property
    def allowed_trace_ids(self) -> list[int]:
        """Ids a constrained trace decode may emit: V_abs and ``<endabstract>``."""
        return list(self.symbol_ids) + [self.end_id]

    def ids_to_trace(self, ids: list[int]) -> str:
        """Render symbol ids as the trace string stored in trace files."""
        lookup = dict(zip(self.symbol_ids, self.symbols, strict=True))
        try:
            return "".join(lookup[i] for i in ids)
        except KeyError as exc:
            raise ValueError(f"id {exc.args[0]} is not an abstract symbol") from None

    @classmethod
    def from_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, num_symbols: int = DEFAULT_NUM_SYMBOLS
    ) -> AbstractVocab:
        """Look up the vocabulary's ids; raises if any token is missing or not a single id."""
        names = all_token_names(num_symbols)
        ids = []
        for name in names:
            encoded = tokenizer.encode(name, add_special_tokens=False)
            if len(encoded) != 1 or encoded[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"{name!r} is not a single token in this tokenizer (got ids {encoded}); "
                    "extend it with abscot_plugin.tokens.vocab.add_abstract_tokens first"
                )
            ids.append(encoded[0])
        if len(set(ids)) != len(ids):
            raise ValueError("abstract vocabulary tokens do not have distinct ids")
        return cls(tuple(names[:-2]), tuple(ids[:-2]), ids[-2], ids[-1])


def has_abstract_tokens(tokenizer: PreTrainedTokenizerBase, num_symbols: int) -> bool:
    """True when every abstract token is already a single special id of ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    return all(name in vocab for name in all_token_names(num_symbols))


def add_abstract_tokens(tokenizer: PreTrainedTokenizerBase, num_symbols: int = DEFAULT_NUM_SYMBOLS) -> AbstractVocab:
    """Add V_abs and the delimiters as special tokens, keeping every existing special token."""
    before = list(tokenizer.all_special_tokens)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": all_token_names(num_symbols)},
        replace_extra_special_tokens=False,
    )
    lost = set(before) - set(tokenizer.all_special_tokens)
    if lost:
        raise RuntimeError(f"adding abstract tokens dropped special tokens {sorted(lost)}")
    return AbstractVocab.from_tokenizer(tokenizer, num_symbols)


def _seed_for(ids: list[int], seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{ids}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def embedding_rows(model: PreTrainedModel) -> int:
    """Rows of the model's input embedding, also while DeepSpeed ZeRO-3 partitions it (under
    ``zero.Init`` a partitioned parameter's ``.shape`` is ``(0,)``; its full shape is ``ds_shape``)."""
    weight = model.get_input_embeddings().weight
    return getattr(weight, "ds_shape", weight.shape)[0]


@torch.no_grad()
def init_new_rows(
    model: PreTrainedModel, ids: list[int], method: InitMethod = DEFAULT_INIT, seed: int = DEFAULT_INIT_SEED
) -> None:
    """Initialise embedding (and untied lm_head) rows ``ids`` on purpose.

    ``random``: normal with the std of the existing rows (the paper); ``mean``: mean of the
    existing rows. Rows past the tokenizer (Qwen3's padding rows) are overwritten in place, so
    this also works where no resize happened. Under DeepSpeed ZeRO-3 every rank must call this
    (the gather is collective): the weight is gathered, rank 0's new rows are broadcast when the
    context exits and each rank keeps its shard of them.
    """
    embeddings = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not embeddings[0]:
        embeddings.append(output.weight)
    index = torch.tensor(sorted(ids), dtype=torch.long)
    for weight in embeddings:
        with gathered([weight], modifier_rank=0):
            old = torch.ones(weight.shape[0], dtype=torch.bool)
            old[index] = False
            # padding rows past the tokenizer are often zeros: take statistics from real rows
            reference = weight[: int(index.min())][old[: int(index.min())]].float()
            if method == "mean":
                rows = reference.mean(0, keepdim=True).expand(len(index), -1)
            elif method == "random":
                gen = torch.Generator().manual_seed(_seed_for(list(index.tolist()), seed))
                rows = torch.randn(len(index), weight.shape[1], generator=gen) * reference.std()
                rows = rows + reference.mean()
            else:
                raise ValueError(f"unknown init method {method!r}; use 'random' or 'mean'")
            weight[index.to(weight.device)] = rows.to(weight.device, weight.dtype)


@contextmanager
def gathered(params: list[torch.Tensor], modifier_rank: int | None = None) -> Iterator[None]:
    """Context that materialises ZeRO-3 partitioned parameters (a no-op for ordinary ones).

    Collective: every rank must enter it. ``modifier_rank``: the rank whose changes are kept
    (broadcast to all ranks on exit); ``None`` for a read-only gather. The parameters are gathered
    one at a time (nested contexts), never in one ``GatheredParameters`` call: with several
    parameters at once on gloo, rank 0 has been seen reading rows of one matrix filled with
    another's (tests/test_zero3.py, two ranks, about one run in three).
    """
    with ExitStack() as stack:
        if any(hasattr(p, "ds_id") for p in params):
            import deepspeed

            for param in params:
                stack.enter_context(deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank))
        yield


def is_tied(model: PreTrainedModel) -> bool:
    """Whether the model's config ties lm_head to the input embedding."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", False))


@torch.no_grad()
def check_tied(model: PreTrainedModel, ids: list[int]) -> None:
    """Raise if a tied model's lm_head no longer scores rows ``ids`` with the embedding's rows.

    Functional (works through peft wrappers such as trainable-token deltas): for a random hidden
    vector h, lm_head(h)[ids] must equal embed(ids) · h. Under DeepSpeed ZeRO-3 the parameters of
    both modules (peft's trainable-token deltas included) are gathered read-only first: every rank
    must call this, before ``deepspeed.initialize`` (afterwards the engine's forward hooks manage
    the partitions).
    """
    if not is_tied(model):
        return
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    params = list({id(p): p for p in (*emb.parameters(), *out.parameters())}.values())
    with gathered(params):
        weight = next(emb.parameters())
        index = torch.tensor(ids, device=weight.device)
        h = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight)
        rows = emb(index)
        logits = out(h[None])[0, index]
        expect = rows @ h
        if not torch.allclose(logits.float(), expect.float(), rtol=1e-3, atol=1e-3):
            raise RuntimeError(
                "lm_head is no longer tied to embed_tokens for the abstract rows "
                f"(max diff {(logits - expect).abs().max().item():.3g})"
            )
