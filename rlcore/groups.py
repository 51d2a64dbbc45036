"""Driver-side handles for the worker groups: fan a call out, gather and reduce the answers."""
from __future__ import annotations

import numpy as np
import ray

from rlcore.batch import shard_batch
from rollout.engine import Completion, Request, SamplingConfig


class LearnerGroup:
    def __init__(self, workers: list, placement=None):
        self.workers = workers
        self.placement = placement

    def call(self, method: str, *args) -> list:
        """Run a collective method on every rank and wait for all of them."""
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def train(self, batch: dict[str, np.ndarray], loss: str, hparams: dict) -> dict[str, float]:
        shards = shard_batch(batch, len(self.workers))
        results = ray.get([w.train.remote(s, loss, hparams) for w, s in zip(self.workers, shards)])
        return reduce_rank_metrics(results)

    def compute_logprobs(self, batch: dict[str, np.ndarray], temperature: float = 1.0, reference: bool = False) -> np.ndarray:
        shards = shard_batch(batch, len(self.workers))
        parts = ray.get(
            [w.compute_logprobs.remote(s, temperature, reference) for w, s in zip(self.workers, shards)]
        )
        return np.concatenate(parts, axis=0)

    def map_shards(self, method: str, batch: dict[str, np.ndarray], *args) -> list:
        """Call `method(shard, *args)` on every rank with its equal share of the rows."""
        shards = shard_batch(batch, len(self.workers))
        return ray.get([getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shards)])

    def compute_values(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate(self.map_shards("compute_values", batch), axis=0)

    def train_values(self, batch: dict[str, np.ndarray], hparams: dict) -> dict[str, float]:
        return reduce_rank_metrics(self.map_shards("train_values", batch, hparams))

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        # An FSDP forward is a collective: every rank runs it, rank 0's answer is used.
        return self.call("sequence_logprobs", sequences)[0]

    def gather_weights(self):
        """Object ref of rank 0's full weights; stays in the object store."""
        refs = [w.gather_weights.remote() for w in self.workers]
        ray.get(refs[1:])
        ray.wait(refs[:1])
        return refs[0]


class RolloutGroup:
    def __init__(self, workers: list):
        self.workers = workers
        self.placement = None

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        """Split requests evenly over workers (prompt-contiguous, for prefix-cache hits)."""
        chunks = np.array_split(np.arange(len(requests)), len(self.workers))
        refs = [
            w.generate.remote([requests[i] for i in chunk], sampling)
            for w, chunk in zip(self.workers, chunks)
            if len(chunk)
        ]
        return [c for part in ray.get(refs) for c in part]

    def update_weights(self, weights_ref, version: int) -> float:
        return max(ray.get([w.update_weights.remote(weights_ref, version) for w in self.workers]))

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        return ray.get(self.workers[0].sequence_logprobs.remote(sequences))


def reduce_rank_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Losses add up over ranks (global normalisers), maxima take the max, the rest average."""
    out: dict[str, float] = {}
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        if key == "train/loss":
            out[key] = float(sum(values))
        elif key.endswith("_max") or key.startswith("time/"):
            out[key] = float(max(values))
        else:
            out[key] = float(np.mean(values))
    return out
