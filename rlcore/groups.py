"""Driver-side handles for the worker groups: fan a call out, gather and reduce the answers."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import ray

from rlcore.batch import shard_batch
from rollout.engine import Completion, Request, SamplingConfig

if TYPE_CHECKING:
    from rlcore.update import UpdateSettings


class LearnerGroup:
    def __init__(self, workers: list, placement=None):
        self.workers = workers
        self.placement = placement
        # Every rank must run collectives in the same order. Calls come from the trainer's thread
        # and, with asynchronous rollout, from the rollout thread (a replaced engine's weights):
        # one call's submissions to all ranks never interleave with another's.
        self._submit = threading.Lock()

    def submit(self, method: str, per_rank_args: list[tuple]) -> list:
        """Object refs of `method(*args)` on each rank, submitted as one unit."""
        with self._submit:
            return [getattr(w, method).remote(*a) for w, a in zip(self.workers, per_rank_args)]

    def call(self, method: str, *args) -> list:
        """Run a collective method on every rank and wait for all of them."""
        return ray.get(self.submit(method, [args] * len(self.workers)))

    def train(self, batch: dict[str, np.ndarray], loss: str, settings: UpdateSettings) -> dict[str, float]:
        shards = shard_batch(batch, len(self.workers))
        return reduce_rank_metrics(ray.get(self.submit("train", [(s, loss, settings) for s in shards])))

    def compute_logprobs(self, batch: dict[str, np.ndarray], temperature: float = 1.0, reference: bool = False,
                         positions: str = "all") -> np.ndarray:
        """Per-token log-probs [B, L-1]; positions="loss" skips the LM head before the trained tokens."""
        parts = self.map_shards("compute_logprobs", batch, temperature, reference, positions)
        return np.concatenate(parts, axis=0)

    def map_shards(self, method: str, batch: dict[str, np.ndarray], *args) -> list:
        """Call `method(shard, *args)` on every rank with its equal share of the rows."""
        shards = shard_batch(batch, len(self.workers))
        return ray.get(self.submit(method, [(s, *args) for s in shards]))

    def compute_values(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate(self.map_shards("compute_values", batch), axis=0)

    def train_values(self, batch: dict[str, np.ndarray], settings: UpdateSettings) -> dict[str, float]:
        return reduce_rank_metrics(self.map_shards("train_values", batch, settings))

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        # An FSDP forward is a collective: every rank runs it, rank 0's answer is used.
        return self.call("sequence_logprobs", sequences)[0]

    def gather_weights(self):
        """Object ref of rank 0's full weights; stays in the object store."""
        refs = self.submit("gather_weights", [()] * len(self.workers))
        ray.get(refs[1:])
        ray.wait(refs[:1])
        return refs[0]


class RolloutGroup:
    """The engines. `on_death(indices)` (set by the trainer) replaces dead workers in place,
    weights loaded, or raises when no restart is left; generate() then retries only the dead
    workers' requests, whose per-request seeds make the retry draw what the lost call would have."""

    def __init__(self, workers: list, on_death: Callable[[list[int]], None] | None = None):
        self.workers = workers
        self.placement = None
        self.on_death = on_death

    def generate(self, requests: list[Request], sampling: SamplingConfig) -> list[Completion]:
        """Split requests evenly over workers (prompt-contiguous, for prefix-cache hits)."""
        chunks = [c for c in np.array_split(np.arange(len(requests)), len(self.workers)) if len(c)]
        parts: list[list[Completion] | None] = [None] * len(chunks)
        todo = list(range(len(chunks)))
        while todo:
            refs = {i: self.workers[i].generate.remote([requests[j] for j in chunks[i]], sampling) for i in todo}
            todo = []
            for i, ref in refs.items():
                try:
                    parts[i] = ray.get(ref)
                except ray.exceptions.RayActorError:
                    todo.append(i)
            if todo:
                self.replace_dead(todo)
        return [c for part in parts for c in part]

    def replace_dead(self, indices: list[int]) -> None:
        if self.on_death is None:
            raise RuntimeError(f"rollout workers {indices} died and nothing replaces them")
        self.on_death(sorted(set(indices)))

    def dead_workers(self, timeout_s: float = 30.0) -> list[int]:
        """Workers that no longer answer (a cheap call each, all at once)."""
        refs = [w.__ray_ready__.remote() for w in self.workers]
        dead = []
        for i, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=timeout_s)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                dead.append(i)
        return dead

    def update_weights(self, weights_ref, version: int) -> float:
        return max(ray.get([w.update_weights.remote(weights_ref, version) for w in self.workers]))

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[list[float]]]:
        """Each engine's log-probs of the same sequences: every engine is checked after a sync."""
        return ray.get([w.sequence_logprobs.remote(sequences) for w in self.workers])


class ObjectStoreWeightSync:
    """Rank 0 puts its full weights (numpy) into the object store; every engine fetches them."""

    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup):
        self.learners, self.rollout = learners, rollout

    def push(self, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        ref = self.learners.gather_weights()
        gathered = time.perf_counter()
        load_s = self.rollout.update_weights(ref, version)
        del ref
        total = time.perf_counter() - t0
        return {"time/sync_gather_s": gathered - t0, "time/sync_load_s": load_s, "time/sync_total_s": total}


class CollectiveWeightSync:
    """Learner rank 0 broadcasts bucketed weights to every engine in a group of their own
    (rollout/weight_sync.py). Both sides of every call are issued before waiting on any."""

    def __init__(self, learners: LearnerGroup, rollout: RolloutGroup, backend: str = "gloo",
                 bucket_bytes: int | None = None, timeout_s: float = 300.0, shared_memory: bool = True):
        from rlcore.topology import rendezvous_near
        from rollout.weight_sync import BUCKET_BYTES

        self.learners, self.rollout = learners, rollout
        addr, port = rendezvous_near(learners.placement)
        world = 1 + len(rollout.workers)
        args = (addr, port, world, backend, timeout_s, bucket_bytes or BUCKET_BYTES, shared_memory)
        refs = learners.submit("weight_sync", [("connect", *args)] * len(learners.workers))
        refs += [w.open_weight_sync.remote(addr, port, 1 + i, world, backend, timeout_s)
                 for i, w in enumerate(rollout.workers)]
        self.info = ray.get(refs)[0]  # buckets and bytes per sync

    def push(self, version: int) -> dict[str, float]:
        t0 = time.perf_counter()
        n = len(self.learners.workers)
        refs = self.learners.submit("weight_sync", [("push",)] * n)
        refs += [w.receive_weights.remote(version) for w in self.rollout.workers]
        results = ray.get(refs)
        sender, engines = results[0], results[n:]
        return {
            "time/sync_gather_s": sender["gather_s"],  # FSDP gather + packing on rank 0
            "time/sync_send_wait_s": sender["send_wait_s"],  # rank 0 waiting on the broadcasts
            "time/sync_recv_wait_s": max(e["recv_wait_s"] for e in engines),  # engines waiting on buckets
            "time/sync_load_s": max(e["load_s"] for e in engines),  # engines loading
            "time/sync_total_s": time.perf_counter() - t0,
        }


def make_weight_sync(kind: str, learners: LearnerGroup, rollout: RolloutGroup, on_gpus: bool = False,
                     shared_memory: bool = True):
    """`rollout.weight_sync`: "collective" (NCCL when learners and engines are on GPUs, gloo
    otherwise, through /dev/shm where they share a host and `shared_memory`) or "object_store"
    (the fallback)."""
    if kind == "object_store":
        return ObjectStoreWeightSync(learners, rollout)
    if kind == "collective":
        return CollectiveWeightSync(learners, rollout, backend="nccl" if on_gpus else "gloo",
                                    shared_memory=shared_memory)
    raise ValueError(f"rollout.weight_sync must be 'collective' or 'object_store', got {kind!r}")


def reduce_rank_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """Losses add up over ranks (global normalisers), maxima take the max, the rest average."""
    out: dict[str, float] = {}
    for key in results[0]:
        values = [r[key] for r in results if key in r]
        if key == "train/loss":
            out[key] = float(sum(values))
        elif key.endswith("_max") or key.startswith("time/"):
            out[key] = float(max(values))
        elif key.endswith("_min"):
            out[key] = float(min(values))
        else:
            out[key] = float(np.mean(values))
    return out
