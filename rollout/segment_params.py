"""A single learner rank keeps its parameters in the weight-sync segment, so a push copies nothing.

Why: with the /dev/shm transport (rollout/shared_segment.py) rank 0 still copied every weight
into the segment each sync: 538 MB for SmolLM2-135M, 0.25 s of a 0.38 s sync on 2 shared cores,
the sync's critical path. With one learner rank the FSDP2 shards are the whole parameters, so
they can live in the segment itself: the optimizer updates them there, and a push only has to
tell the engines that each bucket is ready.

FSDP2 keeps two tensors per parameter on the same storage: the DTensor's local tensor (what the
optimizer updates) and `_sharded_param_data` (what the next all-gather reads). Both are pointed at
the parameter's place in the segment, as FSDP's own `reset_sharded_param` points them at a new
local tensor after `load_state_dict(assign=True)`. The Parameter objects stay the same, so the
optimizer and its state are untouched. This reads FSDP2 internals (torch 2.13): where they
differ, or a parameter is padded, offloaded or sharded over several ranks, it is left where it
is and the push copies it, as before. The push checks every parameter's address each time, so
anything that moved a parameter back out (a `load_state_dict(assign=True)`) costs a copy, never
a stale engine.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import torch


def adopt(model: torch.nn.Module, views: Mapping[str, torch.Tensor]) -> int:
    """Move every parameter of a one-rank FSDP2 `model` whose name is in `views` into its view
    (same shape and dtype); returns how many moved. Call between steps, never mid-forward."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule

    if dist.is_initialized() and dist.get_world_size() > 1:
        return 0
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        return 0
    reshard(model)
    names = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), name if name in views else None)
    moved = 0
    try:
        for module in modules:
            for group in module._get_fsdp_state()._fsdp_param_groups:
                for fsdp_param in group.fsdp_params:
                    name = names.get(id(fsdp_param.sharded_param))
                    if name is not None and _move(fsdp_param, views[name]):
                        moved += 1
    except AttributeError as exc:  # another torch's FSDP2: the push copies instead
        logging.getLogger(__name__).info("learner parameters stay out of the weight-sync segment: %s", exc)
    return moved


def reshard(model: torch.nn.Module) -> None:
    """After a no-grad forward FSDP2 leaves the root's parameters unsharded (copies made by the
    all-gather); resharded, the registered parameters are the sharded ones, in the segment."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _move(fsdp_param, view: torch.Tensor) -> bool:
    local = fsdp_param.sharded_param._local_tensor
    data = fsdp_param._sharded_param_data
    unpadded = tuple(fsdp_param.padded_sharded_param_size) == tuple(local.shape)
    fits = (local.shape == view.shape and local.dtype == view.dtype and local.device == view.device
            and view.is_contiguous())
    one_rank = fsdp_param.sharded_param.device_mesh.size() == 1
    same_storage = data.untyped_storage().data_ptr() == local.untyped_storage().data_ptr()
    if not (unpadded and fits and one_rank and same_storage) or getattr(fsdp_param, "offload_to_cpu", False):
        return False
    view.copy_(local)
    fsdp_param._sharded_param_data = view.view(-1)
    fsdp_param.sharded_param._local_tensor = view
    return True
