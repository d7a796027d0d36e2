"""The GRPO rollout server: one vLLM engine in the vLLM environment, sampling the RL stage's
two-stage rollouts for trainers in the training environment (which has no vLLM), with the
policy's weights pushed to it every step.

    python -m abscot_plugin.rl.rollout_server MODEL [--host 127.0.0.1] [--port 8765] \\
        [--tensor-parallel-size 1] [--gpu-memory-utilization 0.9] [--dtype auto] [--max-model-len N]

MODEL is the model the GRPO run starts from (its ``base_model``: the merged warm-up model, with
the extended tokenizer). The engine is built like every abscot engine
(:func:`~abscot_plugin.generation.engines.build_llm`: ``logprobs_mode="processed_logprobs"``, so
reported log-probs are those of the distribution each token was drawn from; on CPU, the vLLM-CPU
settings) and sampling goes through :class:`~abscot_plugin.generation.vllm_decoder.VLLMDecoder`'s
methods, so the stage-1 constraint is the one evaluation and trace generation use. A worker extension
(:class:`SyncWorker`) receives weights over the sync group of :mod:`abscot_plugin.rl.weight_sync`.

HTTP (JSON in and out; engine calls are serialised by one lock; errors are ``{"error": ...}``
with status 400 for a bad request, 500 otherwise)::

    GET  /health          -> {"model", "workers", "updates"}  (workers: sync ranks 1..workers;
                                                                updates: weight updates loaded)
    POST /sample_traces   {"prefixes", "settings": TraceSettings fields, "seeds"} -> {"samples"}
    POST /sample_answers  {"prompts", "temperature", "max_tokens", "stop_ids", "seeds"} -> {"samples"}
    POST /weights/init    {"host", "port", "world_size", "timeout_s", "backend"} -> {}  (joins the group)
    POST /weights/update  {"meta": [{"name", "dtype", "shape"}]} -> {"tensors": n}   (receives them)
    POST /close           -> {}                                                (leaves the group)

``samples`` is one ``{"ids", "log_probs"}`` per prompt (:class:`~abscot_plugin.generation.decode.Sampled`).
After an update the prefix cache is reset (cached keys/values are the old weights'). vLLM logs
"RotaryEmbedding / ParallelLMHead: Failed to load weights" at each update: the first has no
weights, the second is a tied head (loaded through the embedding, then reprocessed). The client
is :mod:`abscot_plugin.rl.rollout_client`. Imports no axolotl and no trl (tests/test_boundaries.py);
vLLM only in :func:`build_engine` (through ``build_llm``) and the worker extension's process.
"""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..core.choices import DEFAULT_GPU_MEMORY_UTILIZATION
from ..core.traces import TraceSettings
from ..generation.decode import Sampled
from ..generation.engines import build_llm
from ..generation.vllm_decoder import VLLMDecoder
from ..tokens.vocab import AbstractVocab
from .weight_sync import open_group, receive

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
EXTENSION = f"{__name__}.SyncWorker"


class SyncWorker:
    """vLLM worker extension (``worker_extension_cls``): the receiving side of the weight sync.
    Methods run in each vLLM worker, called through ``LLM.collective_rpc``."""

    def abscot_open_group(self, host: str, port: int, world_size: int, timeout_s: float, backend: str) -> None:
        """Join the trainer's sync group as rank 1 + this worker's rank (closing an old one);
        ``backend`` is the trainer's (gloo: CPU, nccl: CUDA), which this worker's device must match."""
        self.abscot_close_group()
        device = self.model_runner.device
        if backend != ("nccl" if device.type == "cuda" else "gloo"):
            raise ValueError(f"the trainer syncs over {backend} but this vLLM worker runs on {device}")
        self.abscot_group = open_group(host, port, 1 + self.rank, world_size, device, timeout_s)

    def abscot_load(self, meta: list[dict[str, Any]]) -> int:
        """Receive the tensors ``meta`` lists and load them through vLLM's in-place reload (which
        redoes the per-layer processing, e.g. vLLM-CPU's packed GEMM weights). Every tensor is
        received even if loading fails, so the trainer's broadcast never hangs."""
        group = getattr(self, "abscot_group", None)
        if group is None:
            raise RuntimeError("no weight-sync group: POST /weights/init first")
        tensors = receive(group, meta, self.model_runner.device)
        try:
            self.model_runner.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)
        finally:
            for _ in tensors:  # drain what reload did not read
                pass
        _reprocess_tied_head(self.model_runner.get_model())
        return len(meta)

    def abscot_close_group(self) -> None:
        """Leave the sync group (nothing to do without one)."""
        if getattr(self, "abscot_group", None) is not None:
            del self.abscot_group


def _reprocess_tied_head(model: Any) -> None:
    """Redo a tied ``lm_head``'s weight processing. vLLM's Qwen3 skips ``lm_head`` when tied, so
    the reload never processes it: its values are the embedding's (one tensor, updated in place),
    but a derived copy (vLLM-CPU's packed GEMM weight behind the logits) would stay the old one."""
    head = getattr(model, "lm_head", None)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)


def samples_json(samples: list[Sampled]) -> dict[str, list]:
    """The wire form of sampled rows: ``{"samples": [{"ids", "log_probs"}]}``."""
    return {"samples": [asdict(s) for s in samples]}


class RolloutEngine:
    """The engine, its decoder and the lock every engine call holds."""

    def __init__(self, llm: Any, vocab: AbstractVocab, model: str):
        self.llm = llm
        self.decoder = VLLMDecoder(llm, vocab)
        self.model = model
        self.lock = threading.Lock()
        self.workers = int(llm.llm_engine.vllm_config.parallel_config.world_size)
        self.updates = 0  # weight updates loaded so far

    def health(self, _: dict) -> dict:
        return {"model": self.model, "workers": self.workers, "updates": self.updates}

    def sample_traces(self, body: dict) -> dict:
        settings = TraceSettings(**body["settings"])
        with self.lock:
            return samples_json(self.decoder.sample_traces(body["prefixes"], settings, body["seeds"]))

    def sample_answers(self, body: dict) -> dict:
        with self.lock:
            return samples_json(
                self.decoder.sample_answers(
                    body["prompts"],
                    float(body["temperature"]),
                    int(body["max_tokens"]),
                    list(body["stop_ids"]),
                    body["seeds"],
                )
            )

    def init_weights(self, body: dict) -> dict:
        args = (
            str(body["host"]),
            int(body["port"]),
            int(body["world_size"]),
            float(body["timeout_s"]),
            str(body["backend"]),
        )
        if args[2] != self.workers + 1:
            raise ValueError(f"world_size {args[2]} != 1 trainer + {self.workers} vLLM workers")
        with self.lock:
            self.llm.collective_rpc("abscot_open_group", args=args)
        return {}

    def update_weights(self, body: dict) -> dict:
        with self.lock:
            counts = self.llm.collective_rpc("abscot_load", args=(body["meta"],))
            self.llm.reset_prefix_cache()
            self.updates += 1
        return {"tensors": counts[0]}

    def close(self, _: dict) -> dict:
        with self.lock:
            self.llm.collective_rpc("abscot_close_group")
        return {}

    def routes(self) -> dict[tuple[str, str], Any]:
        """(method, path) -> handler(body) -> reply."""
        return {
            ("GET", "/health"): self.health,
            ("POST", "/sample_traces"): self.sample_traces,
            ("POST", "/sample_answers"): self.sample_answers,
            ("POST", "/weights/init"): self.init_weights,
            ("POST", "/weights/update"): self.update_weights,
            ("POST", "/close"): self.close,
        }


def make_handler(engine: RolloutEngine) -> type[BaseHTTPRequestHandler]:
    """The HTTP handler class serving ``engine``'s routes."""
    routes = engine.routes()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            route = routes.get((method, self.path))
            if route is None:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no route {method} {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": f"body is not JSON: {exc}"})
                return
            try:
                self._reply(HTTPStatus.OK, route(body))
            except (KeyError, TypeError, ValueError) as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": f"{type(exc).__name__}: {exc}"})
            except Exception as exc:  # noqa: BLE001 (the engine's failure goes back to the client)
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet per-request logs)
            pass

    return Handler


def build_engine(args: argparse.Namespace) -> RolloutEngine:
    """The vLLM engine of ``args`` with the sync extension, built as every abscot engine is
    (:func:`~abscot_plugin.generation.engines.build_llm`)."""
    from transformers import AutoTokenizer

    vocab = AbstractVocab.from_tokenizer(AutoTokenizer.from_pretrained(args.model), args.num_symbols)
    llm = build_llm(
        args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=0,  # vLLM's default; every request carries its own seed
        gpu_memory_utilization=args.gpu_memory_utilization,
        worker_extension_cls=EXTENSION,
    )
    return RolloutEngine(llm, vocab, args.model)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (module doc)."""
    from ..core.symbols import DEFAULT_NUM_SYMBOLS

    parser = argparse.ArgumentParser(
        prog="python -m abscot_plugin.rl.rollout_server",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="the GRPO run's base_model (extended tokenizer included)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=DEFAULT_GPU_MEMORY_UTILIZATION)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    parser.add_argument("--num-symbols", type=int, default=DEFAULT_NUM_SYMBOLS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Start the engine, then serve until interrupted."""
    args = parse_args(argv)
    engine = build_engine(args)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine))
    print(f"abscot rollout server: {args.model} on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # vLLM's spawned workers re-import this module
    main()
