"""Weight sync from the GRPO trainer to the rollout server's vLLM workers (torch only: both sides
import it, the trainer's environment has no vLLM and the vLLM environment no axolotl).

The two sides form their own process group, built directly from a ``torch.distributed.TCPStore``
that the trainer hosts (:func:`open_group`): gloo on CPU, NCCL on CUDA, never the default group,
so accelerate's own group (if any) is untouched. Rank 0 is the trainer's main process; ranks
1..N the server's N vLLM workers (one per tensor-parallel shard; each receives every full tensor
and vLLM's weight loaders shard it). One update: the trainer sends the list of
:func:`tensor_meta` (names, dtypes, shapes) in one HTTP request while it broadcasts the tensors
in that order (:func:`send`); each worker allocates and receives them (:func:`receive`) and
loads them under their Hugging Face names.

What is sent (:func:`hf_weights`): the policy's weights as a plain checkpoint would hold them.

* a plain model: its parameters (a tied ``lm_head`` is the embedding's parameter, so it is not
  sent twice; vLLM's Qwen3 skips ``lm_head`` when tied and loads the embedding);
* a PEFT model: every LoRA-wrapped weight merged (``W + ΔW``, peft's own ``get_delta_weight``)
  and every trainable-token embedding merged (peft's ``get_merged_weights``: the trained V_abs
  rows in place, the same values ``merge_and_unload`` writes, as :mod:`abscot_plugin.checkpoints.merge` does),
  computed without touching the training weights; ``modules_to_save`` copies under the wrapped
  module's name. Names drop ``base_model.model.``, ``.base_layer``, ``.token_adapter`` and
  ``.modules_to_save.default``; adapter parameters are not sent. Example::

      base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight  -> model.layers.0.self_attn.q_proj.weight
      base_model.model.model.embed_tokens.token_adapter.base_layer.weight -> model.embed_tokens.weight

* DeepSpeed ZeRO-3 (full fine-tuning): each parameter is gathered in turn (collective: every
  training process iterates :func:`hf_weights` in step, only the main one sends); the metadata
  comes from the partitions' ``ds_shape`` without gathering. ZeRO-3 under PEFT and FSDP are
  refused with an error (:func:`check_syncable`): not supported yet.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

STORE_PREFIX = "abscot_weight_sync"
_DROP = (".base_layer", ".token_adapter", ".modules_to_save.default")


def open_group(
    host: str,
    port: int,
    rank: int,
    world_size: int,
    device: torch.device,
    timeout_s: float,
    store: dist.TCPStore | None = None,
) -> dist.ProcessGroup:
    """The sync group of ``world_size`` ranks: gloo for a CPU ``device``, NCCL for CUDA. Rank 0
    passes the ``store`` it hosts; the others connect to ``host:port``. Blocks until all joined."""
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, world_size, False, timeout=timeout)
    prefixed = dist.PrefixStore(STORE_PREFIX, store)
    if device.type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        torch.cuda.set_device(device)
        return dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
    return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)


def host_store(timeout_s: float, world_size: int) -> dist.TCPStore:
    """The store rank 0 hosts, on a free port of every interface (``.port`` says which)."""
    return dist.TCPStore("0.0.0.0", 0, world_size, True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (what a process there can connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((socket.gethostbyname(host), 9))  # UDP: no packet is sent
        return sock.getsockname()[0]


def tensor_meta(weights: Iterable[tuple[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """``[{"name", "dtype", "shape"}]`` of the tensors, in sending order (JSON-able); a ZeRO-3
    partition gives its full shape (``ds_shape``)."""
    return [
        {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(getattr(t, "ds_shape", t.shape))}
        for name, t in weights
    ]


def send(
    group: dist.ProcessGroup, tensors: Iterable[torch.Tensor], device: torch.device, check: Callable[[], None]
) -> None:
    """Broadcast each tensor from rank 0 (moved to ``device``, contiguous); while one is in
    flight, ``check()`` is called so that a receiver's failure (reported over HTTP) raises here
    instead of leaving this side waiting for the group timeout."""
    for tensor in tensors:
        work = group.broadcast(tensor.detach().to(device).contiguous(), 0)
        while not work.is_completed():
            check()
            time.sleep(0.0005)
        work.wait()


def receive(
    group: dist.ProcessGroup, meta: list[dict[str, Any]], device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """Worker side of :func:`send`: ``(name, tensor)`` per entry of ``meta``, received in order."""
    for entry in meta:
        tensor = torch.empty(entry["shape"], dtype=getattr(torch, entry["dtype"]), device=device)
        group.broadcast(tensor, 0).wait()
        yield entry["name"], tensor


def hf_name(name: str) -> str:
    """A (PEFT) parameter or module name as the plain checkpoint names it (module doc)."""
    name = name.removeprefix("base_model.model.")
    for part in _DROP:
        name = name.replace(part, "")
    return name


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds DeepSpeed ZeRO-3 partitions (then :func:`hf_weights` is collective)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def check_syncable(model: torch.nn.Module) -> None:
    """Raise NotImplementedError for parameters :func:`hf_weights` cannot send: FSDP shards, and
    ZeRO-3 partitions of a PEFT model (full fine-tuning under ZeRO-3 is supported)."""
    peft = any(_is_tuner(m) for m in model.modules())
    for name, param in model.named_parameters():
        if type(param).__name__ in ("DTensor", "FlatParameter"):
            kind = "FSDP-sharded"
        elif hasattr(param, "ds_shape") and peft:
            kind = "a DeepSpeed ZeRO-3 partition of a PEFT model (LoRA under ZeRO-3)"
        else:
            continue
        raise NotImplementedError(
            f"weight sync to the rollout server does not support {name}: it is {kind}; train LoRA with "
            "DDP or ZeRO-1/2 or full fine-tuning with ZeRO-3, or unset abscot_rollout_server"
        )


def _is_tuner(module: torch.nn.Module) -> bool:
    """A peft tuner layer (LoRA, trainable tokens): it wraps ``base_layer`` and has adapters."""
    return hasattr(module, "base_layer") and hasattr(module, "active_adapters")


def _merged(module: torch.nn.Module) -> torch.Tensor | None:
    """The merged weight of a peft tuner layer, or None when its base weight already is (merged
    in place, or adapters disabled). Raises for adapters whose merge this does not cover."""
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return None
    weight = module.base_layer.weight.detach()
    if hasattr(module, "get_merged_weights"):  # peft TrainableTokensLayer
        return module.get_merged_weights(module.active_adapters).detach()
    if not hasattr(module, "get_delta_weight"):
        raise NotImplementedError(f"weight sync cannot merge a {type(module).__name__} adapter")
    for adapter in module.active_adapters:  # peft LoRA layers
        if getattr(module, "use_dora", {}).get(adapter):
            raise NotImplementedError("weight sync does not merge DoRA adapters")
        if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
            weight = weight + module.get_delta_weight(adapter).detach().to(weight.dtype)
    return weight


@torch.no_grad()
def hf_weights(model: torch.nn.Module, gather: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under their Hugging Face names, adapters merged (module doc). Lazy:
    one merged tensor exists at a time, so iterating twice (metadata, then sending) costs two
    merges per adapter layer but never a second copy of the model. Under ZeRO-3 each tensor is
    yielded gathered (valid until the next one is asked for; collective: every process must
    iterate), or as its partition with ``gather=False`` (enough for :func:`tensor_meta`)."""
    check_syncable(model)
    tuners = {f"{name}.base_layer.weight": m for name, m in model.named_modules() if _is_tuner(m)}
    for name, param in model.named_parameters():  # a tied weight appears once
        if ".lora_" in name or ".original_module." in name or "trainable_tokens_" in name:
            continue
        if hasattr(param, "ds_id") and not gather:
            yield hf_name(name), param  # the partition itself: a detached view loses its ds_shape
            continue
        if hasattr(param, "ds_id"):
            from ..tokens.vocab import gathered

            with gathered([param]):
                yield hf_name(name), param.detach()
            continue
        merged = _merged(tuners[name]) if name in tuners else None
        yield hf_name(name), param.detach() if merged is None else merged
