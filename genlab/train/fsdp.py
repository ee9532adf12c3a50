"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the shared trainer: sharding a model, and the full
(unsharded) model and optimizer state its checkpoints hold.

Each rank keeps a shard of every parameter, gradient and AdamW moment; a block's parameters are
all-gathered for its forward and backward and freed after, and gradients are reduce-scattered
(averaged over ranks, like DDP's all-reduce). Parameters stay fp32 (no ``MixedPrecisionPolicy``):
autocast does the low-precision compute, as it does without FSDP, so the arithmetic is DDP's.

Checkpoints stay the ordinary files: ``torch.distributed.checkpoint.state_dict`` gathers the full
state dict on rank 0's CPU; model.safetensors is what a single process writes (tied weights once),
and the optimizer state is turned into ``optimizer.state_dict()``'s own layout (parameters by index),
so a run can be resumed with or without FSDP and with another number of processes.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard each Transformer block (``model.layers``), then the rest (embedding, final norm, head) at
    the root. In place: the parameters become DTensors, so build the optimizer after this."""
    for block in getattr(model, "layers", ()):
        fully_shard(block)
    fully_shard(model)
    return model


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every rank must call this (it all-gathers): the full state dict on rank 0's CPU, a tied weight
    under its first name only, as ``runs.weights_of`` stores it; other ranks get an empty dict."""
    sd = get_model_state_dict(model, options=_FULL)
    first = {n for n, _ in model.named_parameters()}  # a tied parameter once, by its first name
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in sd.items() if k not in aliases}


def _index_of_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Each optimizer parameter's index in ``optimizer.state_dict()``, under every name it has in the model."""
    index = {p: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    return {n: index[p] for n, p in model.named_parameters(remove_duplicate=False) if p in index}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every rank must call this: the full optimizer state on rank 0 (empty elsewhere), laid out as
    ``optimizer.state_dict()`` of an unsharded model would be."""
    osd = get_optimizer_state_dict(model, optimizer, options=_FULL)
    if not osd:
        return {}
    index = _index_of_name(model, optimizer)
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Every rank: load an ``optimizer.state_dict()``-layout state (each rank read the file) into the
    optimizer of the sharded model; each rank keeps its shard."""
    name = {}
    for n, i in _index_of_name(model, optimizer).items():
        name.setdefault(i, n)  # the first name, as get_optimizer_state_dict uses
    osd = {"state": {name[int(i)]: s for i, s in state["state"].items()},
           "param_groups": [{**g, "params": [name[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))
