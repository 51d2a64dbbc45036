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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import torch


class UnsupportedModel(RuntimeError):
    """The fast path does not know how to update this model; use vLLM's reload_weights."""


class CpuInplaceReload:
    def __init__(self, model: torch.nn.Module):
        from vllm.model_executor.layers.linear import UnquantizedLinearMethod
        from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
        from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor, to_meta_tensor
        from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

        self.staged: dict[torch.nn.Module, dict[str, torch.Tensor]] = {}
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
                # A real tensor in checkpoint format, with the loader attributes of the original
                # parameter (weight_loader, output_dim, ...); allocated once and reused.
                staging = materialize_meta_tensor(restore_layer_refs(to_meta_tensor(meta), layer))
                self.staged.setdefault(layer, {})[pname] = staging

    @torch.no_grad()
    def load(self, model: torch.nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        from vllm.model_executor.model_loader.reload.utils import get_tensor_load_numel

        kernel = {layer: {p: layer._parameters[p] for p in staged} for layer, staged in self.staged.items()}
        for layer in self.staged:
            self._stage(layer)
        owners: dict[int, tuple[torch.Tensor, list[torch.nn.Module]]] = {}
        for layer in self.repack:  # a tied head shares its parameter with the embedding
            for param in layer._parameters.values():
                if param is not None:
                    owners.setdefault(id(param), (param, []))[1].append(layer)
        size = {layer: sum(get_tensor_load_numel(p) for p in layer._parameters.values() if p is not None)
                for layer in self.repack}
        written = dict.fromkeys(self.repack, 0)
        packed_at: dict[torch.nn.Module, int] = {}
        packers = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)))  # the GIL is released
        packing = []

        def on_loaded(param: torch.Tensor, numel: int) -> None:
            for layer in owners[id(param)][1]:
                written[layer] += numel
                if written[layer] >= size[layer] and layer not in packed_at:
                    packed_at[layer] = written[layer]
                    packing.append(packers.submit(self._process, layer))

        restore = [_count_loads(param, on_loaded) for param, _ in owners.values()]
        t0 = time.perf_counter()
        try:
            loaded = model.load_weights(weights)
            t1 = time.perf_counter()
            for future in packing:
                future.result()
            # for benchmarks/weight_sync.py: copying (packing overlapped), then the packing left
            self.timings = {"copy_s": t1 - t0, "pack_tail_s": time.perf_counter() - t1}
            missing = {n for n, _ in model.named_parameters()} - set(loaded or ())
            if missing:  # as vLLM's reload would warn; here a stale layer must not go unnoticed
                raise RuntimeError(f"weights not loaded: {sorted(missing)[:5]}")
            for layer in self.repack:  # never complete (padding), or written to after packing
                if packed_at.get(layer) != written[layer]:
                    self._process(layer)
        finally:
            packers.shutdown(wait=True)  # no packer may still run once the kernels are restored
            for undo in restore:
                undo()
            # The packed layers run from their kernels; their weight stays the empty tensor.
            for layer, tensors in kernel.items():
                layer._parameters.update(tensors)

    def _stage(self, layer: torch.nn.Module) -> None:
        layer._parameters.update(self.staged.get(layer, {}))

    def _process(self, layer: torch.nn.Module) -> None:
        self._stage(layer)  # packing replaces the weight by an empty tensor: pack from staging
        layer.quant_method.process_weights_after_loading(layer)
        if hasattr(layer, "update_param_tp_status"):
            layer.update_param_tp_status()


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
