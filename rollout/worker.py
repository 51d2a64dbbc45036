"""RolloutWorker: a Ray actor that owns one engine and answers generate / weight-update calls."""
from __future__ import annotations

import time
import numpy as np

from rollout.engine import Completion, Engine, Request, SamplingConfig


def make_engine(name: str, model_path: str, *, dtype: str = "float32", seed: int = 0, **kw) -> Engine:
    if name == "vllm":
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, **kw)
    if name == "hf":
        from rollout.hf_engine import HFEngine

        import torch

        return HFEngine(model_path, dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu")
    raise ValueError(f"unknown rollout engine {name!r} (expected 'vllm' or 'hf')")


class RolloutWorker:
    def __init__(self, engine: str, model_path: str, engine_kwargs: dict | None = None):
        t0 = time.perf_counter()
        self.engine = make_engine(engine, model_path, **(engine_kwargs or {}))
        self.weights_version = 0
        self.startup_s = time.perf_counter() - t0

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        return self.engine.generate(requests, sampling)

    def update_weights(self, weights: dict[str, np.ndarray], version: int) -> float:
        t0 = time.perf_counter()
        self.engine.load_weights(weights)
        self.weights_version = version
        return time.perf_counter() - t0

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.engine.sequence_logprobs(sequences)

    def shutdown(self) -> None:
        self.engine.shutdown()
