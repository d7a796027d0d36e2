"""Token ids of free text and of prompts: free text is always plain text.

Free text (message contents, the CoT, the answer) is tokenised by :func:`text_ids`, which never
produces the id of an added token, special or not: a literal ``<think>``, ``<|im_end|>``,
``<TOKEN_A>`` or ``<beginabstract>`` in a row or a problem is the same bytes as any other text
(in Qwen3, ``<think>``/``</think>`` are added tokens that are *not* special, so
``split_special_tokens=True`` alone does not keep them plain). Only the chat template's own
structure tokens (``<|im_start|>``, ``<|im_end|>``, the empty ``<think>\\n\\n</think>`` block)
become their ids (:func:`prompt_ids`). Training (:class:`~abscot_plugin.tokens.sequences.SequenceBuilder`)
and decoding (the lm-eval models, trace generation) tokenise through here, so a training prompt and
a decode prompt are the same ids.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from ..core.prompts import prompt_text
from ..core.rows import BadRowError

_PLAIN: WeakKeyDictionary[PreTrainedTokenizerBase, Tokenizer] = WeakKeyDictionary()


def _plain_tokenizer(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """``tokenizer``'s backend without its added tokens: the same normalizer, pre-tokenizer and
    BPE model (shared, not copied), made once per tokenizer."""
    plain = _PLAIN.get(tokenizer)
    if plain is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TypeError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")
        plain = Tokenizer(backend.model)
        if backend.normalizer is not None:
            plain.normalizer = backend.normalizer
        if backend.pre_tokenizer is not None:
            plain.pre_tokenizer = backend.pre_tokenizer
        _PLAIN[tokenizer] = plain
    return plain


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of free text as plain text: never an added token's id, whatever the text contains.

    For text without added-token strings these are the ids ``tokenizer(text)`` gives.
    """
    return _plain_tokenizer(tokenizer).encode(text, add_special_tokens=False).ids


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], row_id: str = "<prompt>"
) -> list[int]:
    """The prompt x as ids: :func:`~abscot_plugin.core.prompts.prompt_text` with the template's
    structure tokens as their ids and every message content as plain text.

    The template is rendered with a sentinel in place of each content; the text around the
    sentinels is the template's own, and only there are added tokens parsed. The text runs between
    those tokens (template text and contents joined) are tokenised by :func:`text_ids`, so an
    ordinary prompt gets exactly the ids of its whole string. For Qwen3 and one user message::

        <|im_start|> "user\\n" + content <|im_end|> "\\n" <|im_start|> "assistant\\n" <think> "\\n\\n" </think> "\\n\\n"

    (quoted: plain text runs). Raises :class:`~abscot_plugin.core.rows.BadRowError` (kind
    ``template``) naming ``row_id`` if the template does not reproduce the contents verbatim.
    """
    contents = [m["content"] for m in messages]
    sentinels = _sentinels(contents)
    rendered = prompt_text(tokenizer, [{**m, "content": s} for m, s in zip(messages, sentinels, strict=True)])
    fragments = _split_at(rendered, sentinels, row_id)
    joined = fragments[0] + "".join(c + f for c, f in zip(contents, fragments[1:], strict=True))
    if joined != prompt_text(tokenizer, messages):
        raise BadRowError(
            row_id,
            "template",
            "the chat template changes a message's content (e.g. strips a <think> block from an earlier "
            "assistant turn); prompts are tokenised with contents verbatim",
        )
    ids: list[int] = []
    run = ""  # plain text since the last structure token
    for fragment, content in zip(fragments, contents + [""], strict=True):
        for piece in _structure_split(tokenizer, fragment):
            if isinstance(piece, str):
                run += piece
            else:
                ids += text_ids(tokenizer, run) + [piece]
                run = ""
        run += content
    return ids + text_ids(tokenizer, run)


def _sentinels(contents: list[str]) -> list[str]:
    """One marker per content, found in none of the contents (nor in a chat template)."""
    marker = "@@abscot-content"
    while any(marker in c for c in contents):
        marker += "@"
    return [f"{marker}-{i}@@" for i in range(len(contents))]


def _split_at(rendered: str, sentinels: list[str], row_id: str) -> list[str]:
    """``rendered`` cut at each sentinel, which must occur exactly once and in order."""
    fragments, pos = [], 0
    for sentinel in sentinels:
        at = rendered.find(sentinel, pos)
        if at < 0 or rendered.count(sentinel) != 1:
            raise BadRowError(
                row_id, "template", "the chat template does not render each message's content exactly once, in order"
            )
        fragments.append(rendered[pos:at])
        pos = at + len(sentinel)
    return fragments + [rendered[pos:]]


def _structure_split(tokenizer: PreTrainedTokenizerBase, template_text: str) -> list[str | int]:
    """Template text as plain-text pieces and the ids of the added tokens in it (parsed by the
    tokenizer itself, special or not), e.g. ``"<|im_end|>\\n<|im_start|>user\\n"`` →
    ``[<|im_end|> id, "\\n", <|im_start|> id, "user\\n"]`` (empty pieces dropped)."""
    added = tokenizer.added_tokens_decoder
    enc = tokenizer(template_text, add_special_tokens=False, split_special_tokens=False, return_offsets_mapping=True)
    pieces: list[str | int] = []
    pos = 0
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        if token_id in added:
            pieces += [template_text[pos:start], token_id]
            pos = end
    return [p for p in pieces + [template_text[pos:]] if p != ""]
