"""Pin a worker process to CPU cores, so rollout and learners can own disjoint cores on one node.

This is how a disaggregated cluster behaves (engines and learners on their own hardware), and what
asynchronous rollout needs to overlap generation with training instead of time-sharing the cores.
"""
from __future__ import annotations

import os


def pin_to_cores(cores: list[int], *, vllm: bool = False) -> None:
    """Restrict this process (and the threads it starts later) to `cores`."""
    if not cores:
        return
    available = os.sched_getaffinity(0)
    missing = sorted(set(cores) - available)
    if missing:
        raise ValueError(f"CPU cores {missing} are not available to this process (it may use {sorted(available)})")
    os.sched_setaffinity(0, cores)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    if vllm:  # vLLM's CPU worker binds its OpenMP threads itself, from this list
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
    import torch

    torch.set_num_threads(len(cores))
