"""FSDP (torch FSDP2, `fully_shard`) and the optimizer state shared by every way of training.

We shard with torch's own FSDP2 rather than accelerate's FSDP plugin: the same code then runs on CPU (gloo)
and GPU (NCCL), so the test suite checks on CPU what a multi-GPU run does. Each decoder layer and vision
block (the model's `_no_split_modules`) is one shard group, the rest (embeddings, LM head, projector) the
root group. Checkpoints stay plain Hugging Face directories: rank 0 writes the full state dict gathered
from all ranks. The optimizer state is always stored keyed by parameter name with full tensors, so an FSDP
run resumes unsharded (or on another number of processes) and the other way round.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors, on rank 0 only


def shard_groups(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules that become their own FSDP unit: transformer layers and vision blocks."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shard_model(model: torch.nn.Module, device: torch.device, world: int, bf16: bool) -> torch.nn.Module:
    """Shard `model` in place over all `world` processes (a full shard: parameters, gradients, optimizer
    state). Under bf16, layers compute in bf16 from fp32 master shards and gradients are reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for sub in shard_groups(model):
        fully_shard(sub, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """FSDP's no_sync: skip the reduce-scatter on all but the last micro-batch of an optimizer step."""
    model.set_requires_gradient_sync(sync)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights gathered on rank 0 (collective: every rank calls it; the others get {})."""
    return get_model_state_dict(model, options=_FULL)


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, full tensors (collective under FSDP; rank 0 holds it)."""
    return get_optimizer_state_dict(model, opt, options=_FULL if is_sharded(model) else None)


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Restore what `optimizer_state` saved (every rank loads the full state and keeps its own shard)."""
    keys = state.get("state", {}).keys()
    if keys and all(isinstance(k, int) for k in keys):  # checkpoints written before states were keyed by name
        opt.load_state_dict(state)
        return
    options = StateDictOptions(full_state_dict=True) if is_sharded(model) else None
    set_optimizer_state_dict(model, opt, state, options=options)


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP returns a replicated DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
