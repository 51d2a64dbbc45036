"""A faster in-place weight update for vLLM's CPU backend (unquantized models).

Why: `collective_rpc("reload_weights")` re-materialises every layer in fresh memory, copies the
pushed tensors in, re-packs the linear layers and copies once more into the old storage. For
SmolLM2-135M (538 MB fp32) that took 0.6-2.5 s per step here, mostly page faults on the fresh
allocations and the extra copies. A plain `model.load_weights` is not an option on CPU: vLLM
replaces each linear layer's weight by an empty tensor once it has packed it for oneDNN, so
there is nothing to load into, and running the linear layers unpacked made generation ~1.5x
slower (SmolLM2-135M, 32 samples x 32 tokens: 3.6 s -> 5.7 s).

So this keeps one persistent model-format weight per packed layer ("staging"), swaps the staging
tensors in, lets the model's own `load_weights` copy the pushed tensors (it knows how q/k/v and
gate/up are fused), re-packs with the layer's own `process_weights_after_loading` (the same
call vLLM's loader makes), and swaps the empty kernel tensors back. Parameters that are used as
they are (embeddings, norms, biases) are written in place. The log-probs afterwards are exactly
those after reload_weights (tests/integration/test_weight_sync_e2e.py; SmolLM2-135M by hand).
Cost: one copy plus one re-pack, and the staging memory (about the size of the linear weights)
held by the engine.

No copy at all where the weights arrive in persistent buffers (rollout/weight_sync.py: the
receive buffers, or the /dev/shm segment learner rank 0 writes into) laid out so that a fused
layer's parts lie back to back (q, k, v; gate, up; as learners name and order them): the layer
is packed straight from those buffers. Whether a layer may be is decided once, after a load
that went through the model's own loader, by comparing what the loader made with the buffers
element for element; then its own staging memory is freed. SmolLM2-135M: all 120 layers, the
engine's copy 0.14 s -> the embedding's ~0.04 s.

The re-pack (oneDNN's weight reorder, ~0.4 s for 135M parameters on one thread) dominates, so a
layer is handed to a packing thread as soon as all of its elements have been written (counted
as vLLM's layerwise reload counts them): packing overlaps the copying and the arrival of later
buckets, and runs on every core this process may use (its CPU affinity), which are otherwise
idle during a sync (the learners wait on the transfer). A layer written to again after it was
handed over is re-packed at the end.

Everything here runs inside the engine process (`LLM.apply_model`, in-process engine only).
"""
from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import torch


class UnsupportedModel(RuntimeError):
    """The fast path does not know how to update this model; use vLLM's reload_weights."""


class CpuInplaceReload:
    def __init__(self, model: torch.nn.Module):
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
        from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            ParallelLMHead, UnquantizedEmbeddingMethod, VocabParallelEmbedding,
        )
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
        from vllm.model_executor.model_loader.reload.meta import to_meta_tensor
        from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

        self.layer_names = {layer: name for name, layer in model.named_modules()}
        self.packed_modules = dict(getattr(model, "packed_modules_mapping", None) or {})  # qkv_proj: [q, k, v]
        self.metas: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}  # checkpoint-format weights to stage
        self.staged: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}  # their own memory, made on demand
        self.bound: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}  # ... or views of the receive buffers
        self._bound_to: Mapping[str, torch.Tensor] | None = None
        self._sources: dict[str, torch.nn.Module] = {}  # received name -> bound layer it is part of
        self.timings: dict[str, float] = {}
        self.repack: list[torch.nn.Module] = []  # layers whose runtime form is derived from weights
        for name, layer in model.named_modules():
            method = getattr(layer, "quant_method", None)
            if isinstance(method, QuantizeMethodBase):
                if not isinstance(method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)):
                    raise UnsupportedModel(f"{name}: {type(method).__name__} is not an unquantized method")
                self.repack.append(layer)
            info = LAYERWISE_INFO.get(layer)
            recorded = info.restore_metadata[0] if info is not None else {}
            for pname, live in layer._parameters.items():
                meta = recorded.get(pname)
                if live is None or meta is None or (live.shape == meta.shape and live.dtype == meta.dtype):
                    continue
                if method is None:
                    raise UnsupportedModel(f"{name}.{pname} was transformed after loading by no known method")
                # A meta tensor in checkpoint format, with the loader attributes of the original
                # parameter (weight_loader, output_dim, ...), for staging memory of that form.
                self.metas.setdefault(layer, {})[pname] = restore_layer_refs(to_meta_tensor(meta), layer)
        if any(isinstance(layer, ParallelLMHead) for layer in self.repack):
            # vLLM also packs the input embedding for oneDNN, a GEMM nothing runs: lookups read
            # its weight (written in place) and the logits go through the LM head. Re-packing it
            # was ~0.04 s of CPU per sync for SmolLM2's 113 MB embedding.
            self.repack = [layer for layer in self.repack
                           if isinstance(layer, ParallelLMHead) or not isinstance(layer, VocabParallelEmbedding)]

    @torch.no_grad()
    def load(self, model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
             buffers: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load `weights` (name, tensor) in arrival order. `buffers` (name -> tensor, the same
        memory on every call: rollout/weight_sync.py's receive buffers) lets a layer whose
        checkpoint tensors lie back to back there be packed straight from them, with no copy."""
        from vllm.model_executor.model_loader.reload.utils import get_tensor_load_numel

        bound = buffers is not None and buffers is self._bound_to
        in_buffers = self.bound if bound else {}  # layers staged in the receive buffers this time
        copied = [layer for layer in self.metas if layer not in in_buffers]
        kernel = {layer: {p: layer._parameters[p] for p in self.metas[layer]} for layer in self.metas}
        for layer in copied:
            self._stage(layer, self._own_staging(layer))
        owners: dict[int, tuple[torch.Tensor, list[torch.nn.Module]]] = {}
        for layer in self.repack:  # a tied head shares its parameter with the embedding
            for param in layer._parameters.values():
                if param is not None:
                    owners.setdefault(id(param), (param, []))[1].append(layer)
        sources = self._sources if bound else {}
        staging = {layer: in_buffers.get(layer) or self._own_staging(layer) for layer in self.repack}
        # A layer is packed once its loaders wrote all of its elements (as vLLM's layerwise
        # reload counts them) and every part of its bound weights has arrived.
        size = {layer: sum(get_tensor_load_numel(p) for name, p in layer._parameters.items()
                           if p is not None and name not in in_buffers.get(layer, {}))
                for layer in self.repack}
        written = dict.fromkeys(self.repack, 0)
        awaited = dict.fromkeys(self.repack, 0)
        for layer in sources.values():
            awaited[layer] += 1
        packed_at: dict[torch.nn.Module, int] = {}
        packers = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)))  # the GIL is released
        packing = []

        def pack_when_ready(layer: torch.nn.Module) -> None:
            if written[layer] >= size[layer] and awaited[layer] == 0 and layer not in packed_at:
                packed_at[layer] = written[layer]
                packing.append(packers.submit(self._process, layer, staging[layer]))

        def on_loaded(param: torch.Tensor, numel: int) -> None:
            for layer in owners[id(param)][1]:
                written[layer] += numel
                pack_when_ready(layer)

        def to_copy():  # a bound weight's parts are not copied anywhere: they are the staging
            for name, tensor in weights:
                layer = sources.get(name)
                if layer is None:
                    yield name, tensor
                    continue
                if tensor.data_ptr() != buffers[name].data_ptr():
                    raise RuntimeError(f"{name} did not arrive in the receive buffer it was bound to")
                awaited[layer] -= 1
                pack_when_ready(layer)

        restore = [_count_loads(param, on_loaded) for param, _ in owners.values()]
        t0 = time.perf_counter()
        try:
            loaded = set(model.load_weights(to_copy()) or ())
            t1 = time.perf_counter()
            for future in packing:
                future.result()
            # for benchmarks/weight_sync.py: copying (packing overlapped), then the packing left
            self.timings = {"copy_s": t1 - t0, "pack_tail_s": time.perf_counter() - t1}
            loaded |= {f"{self.layer_names[layer]}.{p}" for layer in set(sources.values()) if awaited[layer] == 0
                       for p in self.bound[layer]}
            missing = {n for n, _ in model.named_parameters()} - loaded
            if missing:  # as vLLM's reload would warn; here a stale layer must not go unnoticed
                raise RuntimeError(f"weights not loaded: {sorted(missing)[:5]}")
            for layer in self.repack:  # never complete (padding), or written to after packing
                if packed_at.get(layer) != written[layer]:
                    self._process(layer, staging[layer])
            if buffers is not None and not bound:
                self._bind(buffers)
        finally:
            packers.shutdown(wait=True)  # no packer may still run once the kernels are restored
            for undo in restore:
                undo()
            # The packed layers run from their kernels; their weight stays the empty tensor.
            for layer, tensors in kernel.items():
                layer._parameters.update(tensors)

    def _own_staging(self, layer: torch.nn.Module) -> dict[str, torch.Tensor]:
        from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor

        if layer not in self.metas:
            return {}
        if layer not in self.staged:  # allocated once and reused
            self.staged[layer] = {p: materialize_meta_tensor(meta) for p, meta in self.metas[layer].items()}
        return self.staged[layer]

    @staticmethod
    def _stage(layer: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        layer._parameters.update(tensors)

    def _process(self, layer: torch.nn.Module, staging: dict[str, torch.Tensor]) -> None:
        self._stage(layer, staging)  # packing replaces the weight by an empty tensor: pack from staging
        layer.quant_method.process_weights_after_loading(layer)
        if hasattr(layer, "update_param_tp_status"):
            layer.update_param_tp_status()

    def _bind(self, buffers: Mapping[str, torch.Tensor]) -> None:
        """After a load from `buffers`: bind every staged weight whose parts lie back to back in
        them and equal, element for element, what the model's own loader made of them (so a
        loader that does more than copy, or another fusing order, is never bound)."""
        self.bound, self._sources, self._bound_to = {}, {}, buffers
        for layer, staging in self.staged.items():
            prefix, _, leaf = self.layer_names[layer].rpartition(".")
            views = {}
            for pname, own in staging.items():
                parts = [f"{prefix}.{part}.{pname}" if prefix else f"{part}.{pname}"
                         for part in self.packed_modules.get(leaf, [leaf])]
                view = _back_to_back(buffers, parts)
                if view is None or view.shape != own.shape or view.dtype != own.dtype or not torch.equal(view, own):
                    break
                views[pname] = torch.nn.Parameter(view, requires_grad=False)
                self._sources.update(dict.fromkeys(parts, layer))
            else:
                self.bound[layer] = views
        for layer in self.bound:  # its own staging memory is no longer needed
            del self.staged[layer]


def _back_to_back(buffers: Mapping[str, torch.Tensor], names: list[str]) -> torch.Tensor | None:
    """The tensors `names` as one tensor concatenated along dim 0, where they already lie so in
    memory (one storage, contiguous, each starting where the previous one ends); else None."""
    if not all(n in buffers for n in names):
        return None
    parts = [buffers[n] for n in names]
    first = parts[0]
    end = first.storage_offset()
    for part in parts:
        same = part.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        if not (same and part.is_contiguous() and part.dtype == first.dtype and part.dim() >= 1
                and part.shape[1:] == first.shape[1:] and part.storage_offset() == end):
            return None
        end += part.numel()
    shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
    return torch.empty(0, dtype=first.dtype).set_(first.untyped_storage(), first.storage_offset(), shape)


def _count_loads(param: torch.Tensor, on_loaded) -> callable:
    """Wrap `param`'s weight loader to report the elements each call writes; returns the undo."""
    from vllm.model_executor.model_loader.reload.meta import get_numel_loaded
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    had = "weight_loader" in param.__dict__ or getattr(param, "_weight_loader", None) is not None
    original = getattr(param, "weight_loader", default_weight_loader)
    signature = inspect.signature(original)

    def counting_loader(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        numel, result = get_numel_loaded(original, bound)
        on_loaded(param, numel)
        return result

    param.weight_loader = counting_loader

    def undo():
        if had:
            param.weight_loader = original
        else:
            del param.weight_loader

    return undo


def make_inplace_reload(model: torch.nn.Module) -> CpuInplaceReload:
    """The fast path for `model`, or UnsupportedModel (GPU, quantized, LoRA, unknown layers)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        raise UnsupportedModel("not the CPU backend (reload_weights is cheap on GPUs)")
    return CpuInplaceReload(model)
