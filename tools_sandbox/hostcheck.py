"""Host-side checks that sandboxes left nothing behind, and whether sandbox tests may skip
(used by tests and benchmarks)."""
from __future__ import annotations

import os
import time

from tools_sandbox import isolation as _iso
from tools_sandbox import sandbox as _sandbox

# Every sandbox test skipped for want of isolation says this: .ci/run counts such skips.
SKIP_MARK = "SANDBOX-SKIP"


def skip_reason(exc: _iso.SandboxUnavailable) -> str | None:
    """The reason to skip a sandbox test for, or None where ``exc`` must fail the test.

    Only what the machine lacks may skip: bubblewrap itself, or namespaces the kernel refuses
    (named, with the kernel's error). A sandbox that fails to start on a machine that has both
    is a bug of ours, and a too-old bubblewrap a setup fault: those fail.
    """
    if exc.kind not in _iso.MACHINE_LACKS:
        return None
    what = exc.kind
    if exc.kind == _iso.NAMESPACES_FORBIDDEN and exc.namespaces:
        what += f" ({', '.join(exc.namespaces)})"
    return f"{SKIP_MARK}: {what}: {exc}"


def sandbox_or_skip(isolation: str = "bwrap") -> "_iso.Isolation":
    """For tests: this machine's bwrap isolation, or a pytest skip saying what is missing.

    Never falls back to running unisolated (RLCORE_SANDBOX_UNSAFE_NO_ISOLATION is ignored), and
    any other start failure raises SandboxUnavailable: the test fails.
    """
    try:
        return _iso.resolve(isolation, env_fallback=False)
    except _iso.SandboxUnavailable as exc:
        reason = skip_reason(exc)
        if reason is None:
            raise
        import pytest

        pytest.skip(reason)


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


def host_dirs_in_scratch(python: str | None = None, ro_binds=()) -> list[str]:
    """Names in a fresh sandbox's /scratch: the read-only host dirs bound there (an interpreter
    or project under /tmp or /scratch on the host); none in the usual layout."""
    iso = _iso.resolve("bwrap", python, env_fallback=False)
    dsts = [_iso.sandbox_path(p) for p in iso.python.prefixes] + [
        _iso.sandbox_path(b if isinstance(b, str) else b[1]) for b in ro_binds]
    return sorted({d.split("/")[2] for d in dsts if d.startswith(_iso.SCRATCH + "/")})
