"""Host-side checks that sandboxes left nothing behind (used by tests and benchmarks)."""
from __future__ import annotations

import os
import time

from tools_sandbox import sandbox as _sandbox


def marker_pids(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(p))
            except OSError:
                pass
    return out


def stray_sandbox_pids() -> list[int]:
    """Host processes running as a uid one of our sandboxes had, now that it is closed.

    Only this process's uids count: a training run's sandboxes beside the tests are not strays,
    while our own escapees are, wherever they were re-parented.
    """
    closed = set(_sandbox._issued_uids) - {sb.uid for sb in list(_sandbox._live) if sb.uid is not None}
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                uid = os.stat(f"/proc/{p}").st_uid
            except OSError:
                continue
            if uid in closed:
                out.append(int(p))
    return out


def leftovers(marker: str | None = None, timeout_s: float = 10.0) -> list[int]:
    """Killing is immediate and reaping asynchronous (slow on a loaded host): poll up to
    ``timeout_s`` for none; a clean host answers at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = (marker_pids(marker) if marker else []) + stray_sandbox_pids()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)
