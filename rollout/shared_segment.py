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


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
