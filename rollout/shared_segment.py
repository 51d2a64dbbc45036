"""A shared-memory segment for the weight sync when learner rank 0 and an engine share a host.

Why: over loopback TCP the kernel copies every byte twice (into the socket, out of it) and both
processes spend CPU on it: for SmolLM2-135M (538 MB) about 0.3 s of the 0.57 s sync on this
2-core machine. Through a file in /dev/shm rank 0 copies the weights once into memory that the
engines read directly (a single learner rank does not even copy: its parameters live there,
rollout/segment_params.py); the gloo group still carries one small token per bucket, so an
engine knows when a bucket is complete and loads it while later ones are being written.

Rank 0 creates the file with its space reserved up front (a tmpfs that fills up mid-copy would
kill the process with SIGBUS instead of raising), every engine maps it, and rank 0 unlinks the
name once all have: the mappings live on and nothing is left in /dev/shm when a process dies.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import uuid
import warnings

import torch

SHM_DIR = "/dev/shm"


def create(nbytes: int, directory: str = SHM_DIR) -> tuple[str, torch.Tensor] | tuple[None, str]:
    """(path, bytes) of a new segment of `nbytes` mapped shared, or (None, why not)."""
    if not os.path.isdir(directory):
        return None, f"{directory} does not exist"
    path = os.path.join(directory, f"rlcore-weights-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(nbytes, 1))
        finally:
            os.close(fd)
        return path, torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
    except (OSError, RuntimeError) as exc:  # ENOSPC on a small /dev/shm (Docker's 64 MB), ...
        unlink(path)
        return None, f"{path}: {exc}"


def attach(path: str, nbytes: int) -> torch.Tensor | None:
    """The segment rank 0 created, mapped read-only, or None where this process cannot see it
    (another host or another /dev/shm: a container of its own). Read-only because a single
    learner rank keeps its parameters there (rollout/segment_params.py): an engine that wrote
    into it would crash, not silently change the policy being trained."""
    try:
        if os.path.getsize(path) != nbytes:
            return None
        with open(path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), nbytes, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    with warnings.catch_warnings():  # "non-writable buffer": exactly the point
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(mapped, dtype=torch.uint8)  # keeps the mapping alive


def offer(store, world_size: int, nbytes: int, enabled: bool) -> torch.Tensor | None:
    """Rank 0 of the weight-update group: create the segment, learn from the group's store which
    engines could map it, and settle the transport for all of them (every engine or none: one
    broadcast carries the same bytes to everyone). The segment, or None for TCP."""
    path, segment, why = None, None, "rollout.weight_sync_shared_memory is off, or not a CPU group"
    if enabled:
        path, created = create(nbytes)
        segment, why = (created, "") if path is not None else (None, created)
    store.set("segment", json.dumps({"path": path, "nbytes": nbytes}))
    attached = [store.get(f"attached/{rank}") == b"1" for rank in range(1, world_size)]
    if path is not None:
        unlink(path)  # every engine that could map it has: the mappings live on
        if not all(attached):
            why = f"engine(s) {[r + 1 for r, ok in enumerate(attached) if not ok]} are on another host"
    shared = path is not None and all(attached)
    store.set("transport", "shared_memory" if shared else "tcp")
    if not shared and enabled:
        logging.getLogger(__name__).info("weight sync over sockets, not shared memory: %s", why)
    return segment if shared else None


def accept(store, rank: int) -> torch.Tensor | None:
    """An engine (group rank `rank`): map rank 0's segment if this host sees it; None where the
    transport is TCP."""
    offered = json.loads(store.get("segment"))
    segment = attach(offered["path"], offered["nbytes"]) if offered["path"] else None
    store.set(f"attached/{rank}", b"1" if segment is not None else b"0")
    return segment if store.get("transport") == b"shared_memory" else None


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
