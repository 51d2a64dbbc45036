"""RolloutWorker: a Ray actor that owns one engine and answers generate / weight-update calls."""
from __future__ import annotations

import time
import numpy as np

from rlcore.cpu_pinning import pin_to_cores
from rollout.engine import Completion, Engine, Request, SamplingConfig


def make_engine(name: str, model_path: str, *, dtype: str = "float32", seed: int = 0,
                trust_remote_code: bool = False, **kw) -> Engine:
    if name == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code, **kw)
    if name == "hf":
        from rollout.hf_engine import HFEngine

        import torch

        return HFEngine(model_path, dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu",
                        trust_remote_code=trust_remote_code)
    raise ValueError(f"unknown rollout engine {name!r} (expected 'vllm' or 'hf')")


class RolloutWorker:
    def __init__(self, engine: str, model_path: str, engine_kwargs: dict | None = None):
        t0 = time.perf_counter()
        engine_kwargs = dict(engine_kwargs or {})
        pin_to_cores(engine_kwargs.pop("cpu_cores", None) or [], vllm=engine == "vllm")
        self.engine = make_engine(engine, model_path, **engine_kwargs)
        self.weights_version = 0
        self.startup_s = time.perf_counter() - t0
        self.receiver = None  # rollout/weight_sync.py, once the driver opened the group

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        return self.engine.generate(requests, sampling)

    def update_weights(self, weights: dict[str, np.ndarray], version: int) -> float:
        t0 = time.perf_counter()
        self.engine.load_weights(weights)
        self.weights_version = version
        return time.perf_counter() - t0

    def open_weight_sync(self, addr: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float) -> int:
        """Join the weight-update group as `rank` (learner rank 0 is rank 0); returns its bytes per sync."""
        from rollout.weight_sync import WeightReceiver, open_group

        self.receiver = WeightReceiver(open_group(addr, port, rank, world_size, backend, timeout_s))
        return self.receiver.manifest.nbytes

    def receive_weights(self, version: int) -> dict[str, float]:
        """One collective sync: the engine loads each bucket as soon as it has arrived."""
        t0 = time.perf_counter()
        weights = self.receiver.receive()
        try:
            self.engine.load_weights(weights)
        finally:
            weights.wait()  # even after a refused load: rank 0 only finishes once every bucket is out
        self.weights_version = version
        total = time.perf_counter() - t0
        return {"engine_s": total, "recv_wait_s": weights.wait_s, "load_s": total - weights.wait_s}

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.engine.sequence_logprobs(sequences)

    def shutdown(self) -> None:
        self.engine.shutdown()
        self.receiver = None
