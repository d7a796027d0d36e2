"""lm-eval model classes for the abscot tasks (``eval_tasks/``): ``abscot-hf`` and ``abscot-vllm``.

lm-eval cannot run a two-stage decode inside a task, so the decode lives here. Both classes share
:class:`AbsCoTLM`, which builds the prompt ids and runs :func:`abscot_plugin.generation.decode.two_stage`
(abstract mode) or a greedy completion (verbal mode); they differ only in the
:class:`~abscot_plugin.generation.decode.Decoder` they construct (transformers or vLLM), whose model
or engine :mod:`abscot_plugin.generation.engines` loads as trace generation loads it.

Each request's context is the problem text (the tasks use ``doc_to_text: problem``). The prompt is
built here, from token ids, exactly as training builds it: ``tokenization.prompt_ids(tok,
math_messages(problem))`` then ``<beginabstract>`` (:meth:`SequenceBuilder.problem_prefix`). The
problem is plain text: a literal ``<TOKEN_A>`` or ``<|im_end|>`` in it is never that token's id.
The task's ``generation_kwargs`` choose the mode and settings (:class:`DecodeSpec`). The response
handed back to lm-eval is a :class:`~abscot_plugin.eval.scoring.DecodeRecord` as JSON: trace and
answer are kept apart at the id level, so special tokens are never dropped from the trace
(lm-eval's own HF decode skips them) nor mixed into the answer text.

Importing this module registers the classes with lm-eval (``eval_tasks/utils.py`` and
``abscot_plugin.eval.eval_cli`` import it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..core.choices import DEFAULT_GPU_MEMORY_UTILIZATION, DEFAULT_HF_BATCH_SIZE
from ..core.prompts import END_OF_TURN, math_messages
from ..core.symbols import DEFAULT_NUM_SYMBOLS
from ..core.traces import TraceSettings
from ..generation.decode import Decoder, two_stage
from ..generation.engines import build_llm, hf_device, load_hf
from ..generation.hf_decoder import HFDecoder
from ..generation.vllm_decoder import VLLMDecoder
from ..tokens import tokenization
from ..tokens.sequences import SequenceBuilder
from ..tokens.vocab import AbstractVocab, has_abstract_tokens
from .eval_cli import TRACE_GEN_KWARGS
from .scoring import DECODE_MODES, DecodeMode, DecodeRecord

log = logging.getLogger(__name__)

# the abstract tasks' answer budget when a request names none (eval_tasks/_abscot_template_yaml
# states it too; tests/test_docs.py pins the two)
DEFAULT_ANSWER_TOKENS = 2048
# gen_kwargs key -> (TraceSettings field, its type)
_TRACE_KEYS = {key: (field, type(getattr(TraceSettings, field))) for key, field in TRACE_GEN_KWARGS.items()}
_ANSWER_KEYS = {"abscot_mode", "until", "max_gen_toks", "do_sample", "temperature"}


@dataclass(frozen=True)
class DecodeSpec:
    """How to decode one request, read from the task's ``generation_kwargs``.

    ``abscot_mode``: ``abstract`` (two-stage) or ``verbal`` (answer only). ``max_gen_toks``: the
    answer budget (default :data:`DEFAULT_ANSWER_TOKENS`). ``until``: stop strings, each a single token of the tokenizer
    (decoding works on ids). The answer is always greedy: ``do_sample`` must be false and
    ``temperature`` 0 if given. Abstract mode also reads ``m_min``, ``m_max``,
    ``trace_temperature``, ``trace_top_p``, ``trace_seed`` (defaults: those of
    :class:`~abscot_plugin.core.traces.TraceSettings`); verbal mode ignores them.
    """

    mode: DecodeMode
    max_new_tokens: int
    stop: tuple[str, ...]
    trace: TraceSettings | None

    @classmethod
    def from_gen_kwargs(cls, gen_kwargs: dict[str, Any]) -> DecodeSpec:
        unknown = sorted(set(gen_kwargs) - _ANSWER_KEYS - set(_TRACE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown generation_kwargs for abscot models: {unknown}; allowed: "
                f"{sorted(_ANSWER_KEYS | set(_TRACE_KEYS))}"
            )
        mode = gen_kwargs.get("abscot_mode")
        if mode not in DECODE_MODES:
            raise ValueError(
                f"generation_kwargs need abscot_mode in {list(DECODE_MODES)} (got {mode!r}); abscot models "
                "only serve the tasks in eval_tasks/"
            )
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) != 0:
            raise ValueError(
                "the answer is decoded greedily: drop do_sample/temperature "
                "(the trace's sampling temperature is trace_temperature)"
            )
        until = gen_kwargs.get("until") or []
        stop = (until,) if isinstance(until, str) else tuple(until)
        max_new = _as(gen_kwargs.get("max_gen_toks", DEFAULT_ANSWER_TOKENS), int, "max_gen_toks")
        if max_new < 1:
            raise ValueError(f"max_gen_toks must be >= 1, got {max_new}")
        trace = None
        if mode == "abstract":
            trace = TraceSettings(
                **{
                    field: _as(gen_kwargs[key], kind, key)
                    for key, (field, kind) in _TRACE_KEYS.items()
                    if key in gen_kwargs
                }
            )
        return cls(mode, max_new, stop, trace)


def _as(value: Any, kind: type, key: str) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"generation_kwargs {key}={value!r} is not a {kind.__name__}") from None


def load_vocab(tokenizer: PreTrainedTokenizerBase, num_symbols: int) -> AbstractVocab | None:
    """The abstract vocabulary of an extended checkpoint, or None for a base model."""
    if not has_abstract_tokens(tokenizer, num_symbols):
        return None
    return AbstractVocab.from_tokenizer(tokenizer, num_symbols)


class AbsCoTLM(LM):
    """The backend-independent part: prompts, the two-stage decode and the response records."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        decoder: Decoder,
        vocab: AbstractVocab | None,
        chunk_size: int,
        info: dict[str, Any],
    ):
        super().__init__()
        self.tok = tokenizer
        self.decoder = decoder
        self.vocab = vocab
        self.builder = SequenceBuilder(tokenizer, vocab) if vocab is not None else None
        self.chunk_size = chunk_size
        self.info = info

    # -- prompts -----------------------------------------------------------------------------
    def prompt_ids(self, problem: str, mode: DecodeMode, row_id: str = "<prompt>") -> list[int]:
        """Decode prompt ids: x (verbal) or x <beginabstract> (abstract), as in training."""
        if mode == "verbal":
            return tokenization.prompt_ids(self.tok, math_messages(problem), row_id)
        if self.builder is None:
            raise ValueError(
                f"{self.info['pretrained']}: the tokenizer has no abstract vocabulary "
                f"(M={self.info['num_symbols']}); abstract tasks need an Abstract-CoT checkpoint"
            )
        return self.builder.problem_prefix(problem, row_id)

    def stop_ids(self, stop: tuple[str, ...]) -> list[int]:
        """Token ids of the stop strings; each must be one token."""
        ids = []
        for text in stop:
            encoded = self.tok.encode(text, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(
                    f"stop string {text!r} is {len(encoded)} tokens; abscot models stop on single "
                    f"tokens (e.g. {END_OF_TURN!r})"
                )
            ids.append(encoded[0])
        return ids

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, problems: list[str], spec: DecodeSpec, row_ids: list[str]) -> list[DecodeRecord]:
        """Decode one chunk of problems that share ``spec``."""
        prompts = [self.prompt_ids(p, spec.mode, r) for p, r in zip(problems, row_ids, strict=True)]
        stop = self.stop_ids(spec.stop)
        budget = spec.max_new_tokens
        if spec.mode == "verbal":
            answers = self.decoder.complete(prompts, budget, stop)
            return [self._record("verbal", [], False, a, budget) for a in answers]
        assert spec.trace is not None and self.builder is not None
        outs = two_stage(self.decoder, prompts, spec.trace, budget, stop, self.builder)
        return [self._record("abstract", o.trace, len(o.trace) == spec.trace.m_max, o.answer, budget) for o in outs]

    def _record(self, mode: DecodeMode, trace: list[int], hit: bool, answer: list[int], budget: int) -> DecodeRecord:
        return DecodeRecord(
            mode=mode,
            trace=self.vocab.ids_to_trace(trace) if trace else "",
            abstract_tokens=len(trace),
            hit_m_max=hit,
            answer=self.tok.decode(answer, skip_special_tokens=False),
            answer_tokens=len(answer),
            answer_truncated=len(answer) >= budget,
        )

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """One JSON :class:`DecodeRecord` per request, in request order."""
        for req in requests:
            problem = (req.doc or {}).get("problem")
            if problem is not None and req.args[0] != problem:
                raise ValueError(
                    f"{req.task_name} document {req.doc_id}: the context is not the bare problem text; "
                    "abscot models build the prompt themselves, so run without --system_instruction, "
                    "--apply_chat_template, a task description or few-shot examples"
                )
        specs = [DecodeSpec.from_gen_kwargs(dict(req.args[1])) for req in requests]
        results: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="abscot decode", disable=disable_tqdm or self.rank != 0) as bar:
            for spec, chunk in self._chunks(specs):
                records = self.decode(
                    [requests[i].args[0] for i in chunk],
                    spec,
                    [f"{requests[i].task_name}:{requests[i].doc_id}" for i in chunk],
                )
                for i, record in zip(chunk, records, strict=True):
                    results[i] = record.to_json()
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                bar.update(len(chunk))
        return results  # type: ignore[return-value]

    def _chunks(self, specs: list[DecodeSpec]) -> Iterator[tuple[DecodeSpec, list[int]]]:
        groups: dict[DecodeSpec, list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault(spec, []).append(i)
        for spec, idx in groups.items():
            for start in range(0, len(idx), self.chunk_size):
                yield spec, idx[start : start + self.chunk_size]

    # -- the rest of lm-eval's LM interface ------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("abscot models only generate (generate_until tasks in eval_tasks/)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("abscot models only generate (generate_until tasks in eval_tasks/)")

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        raise NotImplementedError(
            "abscot models build the Qwen3 chat prompt themselves (as in training); run without --apply_chat_template"
        )

    @property
    def tokenizer_name(self) -> str:
        return str(self.info["pretrained"]).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """Merged into the results file's ``config``; the report labels runs with it."""
        return {f"abscot_{key}": value for key, value in self.info.items()}


def _info(backend: str, pretrained: str, num_symbols: int, vocab: AbstractVocab | None) -> dict[str, Any]:
    return {
        "backend": backend,
        "pretrained": str(pretrained),
        "num_symbols": num_symbols,
        "abstract_vocab": vocab is not None,
    }


@register_model("abscot-hf")
class AbsCoTHFLM(AbsCoTLM):
    """transformers backend (CPU and small GPU runs).

    model_args: ``pretrained`` (checkpoint dir or hub id), ``dtype`` (``auto``: bfloat16 on CUDA,
    float32 otherwise; :func:`~abscot_plugin.generation.engines.hf_dtype`), ``num_symbols`` (M,
    default 64). ``--device`` (CPU when CUDA is absent) and ``--batch_size`` (prompts per
    ``generate`` call; an integer) come from lm-eval's flags.
    """

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int | str = DEFAULT_HF_BATCH_SIZE,
        num_symbols: int = DEFAULT_NUM_SYMBOLS,
        max_batch_size: int | None = None,  # lm-eval passes it with --max_batch_size; unused
        trust_remote_code: bool = False,
    ):
        try:
            batch = int(batch_size)
        except ValueError:
            raise ValueError(f"abscot-hf needs an integer --batch_size, got {batch_size!r}") from None
        device = hf_device(device)
        try:
            model = load_hf(pretrained, dtype, device, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise ValueError(f"abscot-hf: {exc}") from None
        tok = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        vocab = load_vocab(tok, num_symbols)
        log.info(
            "abscot-hf: %s on %s (%s), abstract vocabulary: %s", pretrained, device, model.dtype, vocab is not None
        )
        super().__init__(
            tok,
            HFDecoder(model, tok, vocab, batch_size=batch),
            vocab,
            chunk_size=batch,
            info=_info("hf", pretrained, num_symbols, vocab),
        )


@register_model("abscot-vllm")
class AbsCoTVLLM(AbsCoTLM):
    """vLLM backend (GPU; stage 2 reuses the stage-1 prompt through vLLM's prefix cache).

    model_args: ``pretrained``, ``dtype``, ``tensor_parallel_size``, ``gpu_memory_utilization``,
    ``max_model_len``, ``enforce_eager`` (default: on on CPU only), ``seed`` (engine seed; traces
    are seeded per prompt by ``trace_seed``), ``num_symbols``, ``chunk_size`` (prompts handed to
    vLLM per call, default 4096). The engine is :func:`~abscot_plugin.generation.engines.build_llm`'s.
    Serve merged checkpoints (vLLM's LoRA loader rejects extra vocabulary rows).
    """

    def __init__(
        self,
        pretrained: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        seed: int = 0,
        num_symbols: int = DEFAULT_NUM_SYMBOLS,
        chunk_size: int = 4096,
        batch_size: int | str | None = None,  # lm-eval passes --batch_size; vLLM batches itself
        max_batch_size: int | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
    ):
        tok = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        vocab = load_vocab(tok, num_symbols)
        llm = build_llm(
            pretrained,
            dtype=dtype,
            max_model_len=int(max_model_len) if max_model_len else None,
            tensor_parallel_size=int(tensor_parallel_size),
            seed=int(seed),
            gpu_memory_utilization=float(gpu_memory_utilization),
            enforce_eager=None if enforce_eager is None else bool(enforce_eager),
            enable_prefix_caching=True,
            trust_remote_code=trust_remote_code,
        )
        super().__init__(
            tok,
            VLLMDecoder(llm, vocab),
            vocab,
            chunk_size=int(chunk_size),
            info=_info("vllm", pretrained, num_symbols, vocab),
        )
