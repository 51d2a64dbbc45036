"""Warm sandboxes, a concurrency limit, and stateful sessions on top of ``Sandbox``.

Starting a sandbox costs an interpreter start (bwrap + Python, tens of ms, more under load),
so the pool keeps ``warm`` sandboxes started ahead of time and replaces each one it hands out
from a background thread. A sandbox serves exactly one one-shot call or one session and is
then killed: nothing (files, processes, SysV IPC, monkey-patched modules) can leak from one
caller to the next, which resetting a used interpreter could not promise.
"""
from __future__ import annotations

import collections
import logging
import threading
import weakref
from contextlib import contextmanager

from tools_sandbox.limits import Limits
from tools_sandbox.result import RunResult
from tools_sandbox.sandbox import Sandbox, SandboxError

log = logging.getLogger(__name__)


class Session:
    """Jupyter-like: names defined in one ``run`` are there in the next.

    An exception keeps the state; a timeout or kill ends it (the result has
    ``session_reset=True``) and the next ``run`` starts from a fresh sandbox. Sessions never
    share anything. Not meant to be used from two threads at once (calls are serialised).
    """

    def __init__(self, pool: "SandboxPool"):
        self._pool = pool
        self._sb: Sandbox | None = None
        self._lock = threading.Lock()
        self.closed = False
        self.resets = 0

    def run(self, code: str, timeout_s: float = 5.0, *, display: bool = True) -> RunResult:
        """Run one cell. With ``display`` the value of a final expression is printed."""
        with self._lock:
            if self.closed:
                raise RuntimeError("session is closed")
            with self._pool._slot:
                if self._sb is None:
                    self._sb = self._pool._take()
                res = self._sb.run(code, timeout_s, display=display)
            if res.session_reset:
                self._sb.close()
                self._sb = None
                self.resets += 1
            return res

    def reset(self) -> None:
        """Drop all state now; the next call starts in a fresh sandbox."""
        with self._lock:
            if self._sb is not None:
                self._sb.close()
                self._sb = None

    def close(self) -> None:
        self.reset()
        self.closed = True
        self._pool._sessions.discard(self)
        if self._pool._session_slots is not None and not getattr(self, "_released", False):
            self._released = True
            self._pool._session_slots.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SandboxPool:
    """Thread-safe pool of sandboxed interpreters.

    ``max_workers``: calls executing at once (more callers wait). ``warm``: sandboxes kept
    started ahead (default ``max_workers``). ``max_sessions``: open sessions at once (None:
    unlimited; an idle session holds one sleeping interpreter, ~15 MB). ``limits``,
    ``isolation``, ``python``, ``ro_binds``: as for ``Sandbox``.
    """

    def __init__(self, max_workers: int = 4, *, warm: int | None = None,
                 limits: Limits | None = None, isolation: str = "bwrap",
                 python: str | None = None, ro_binds: tuple = (),
                 max_sessions: int | None = None, start_timeout_s: float = 30.0):
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.max_workers = max_workers
        self.warm = max_workers if warm is None else max(0, warm)
        self.limits = limits or Limits()
        self._sb_kwargs = dict(isolation=isolation, python=python, ro_binds=tuple(ro_binds),
                               start_timeout_s=start_timeout_s)
        Sandbox(self.limits, **self._sb_kwargs)  # fails now (SandboxUnavailable), not later
        self._slot = threading.BoundedSemaphore(max_workers)
        self._session_slots = threading.BoundedSemaphore(max_sessions) if max_sessions else None
        self._idle: collections.deque[Sandbox] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self._sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()
        self.cold_starts = 0
        self._filler = None
        if self.warm:
            self._filler = threading.Thread(target=self._fill, name="sandbox-pool-fill",
                                            daemon=True)
            self._filler.start()

    # -- sandboxes ---------------------------------------------------------------------------
    def _new(self) -> Sandbox:
        return Sandbox(self.limits, **self._sb_kwargs)

    def _fill(self):
        """Keep ``warm`` spawned sandboxes; readiness is awaited by whoever takes one."""
        while True:
            with self._cv:
                while not self._closed and len(self._idle) >= self.warm:
                    self._cv.wait()
                if self._closed:
                    return
            try:
                sb = self._new().start(wait=False)
            except Exception:  # keep the pool alive; callers will cold-start and see the error
                log.exception("could not start a warm sandbox")
                with self._cv:
                    self._cv.wait(1.0)
                continue
            with self._cv:
                if self._closed:
                    sb.close()
                    return
                self._idle.append(sb)

    def _take(self) -> Sandbox:
        """A fresh, ready sandbox: a warm one if there is one, else started now."""
        while True:
            with self._cv:
                sb = self._idle.popleft() if self._idle else None
                self._cv.notify_all()
            if sb is None:
                break
            try:
                sb.wait_ready()
                if sb.alive:
                    return sb
            except SandboxError:
                log.warning("a warm sandbox failed to start; trying another", exc_info=True)
            sb.close()
        self.cold_starts += 1
        return self._new().start()

    # -- API -------------------------------------------------------------------------------
    def run(self, code: str, timeout_s: float = 5.0) -> RunResult:
        """One-shot: run ``code`` in a fresh sandbox, which is killed afterwards."""
        with self._slot:
            sb = self._take()
            try:
                return sb.run(code, timeout_s)
            finally:
                sb.close()

    def new_session(self) -> Session:
        """A stateful session (close it when done; ``session()`` does that for you)."""
        if self._closed:
            raise RuntimeError("pool is closed")
        if self._session_slots is not None:
            self._session_slots.acquire()
        s = Session(self)
        self._sessions.add(s)
        return s

    @contextmanager
    def session(self):
        s = self.new_session()
        try:
            yield s
        finally:
            s.close()

    def close(self) -> None:
        """Kill warm sandboxes and every open session's sandbox."""
        with self._cv:
            self._closed = True
            idle, self._idle = list(self._idle), collections.deque()
            self._cv.notify_all()
        for sb in idle:
            sb.close()
        for s in list(self._sessions):
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_default: SandboxPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The process-wide pool behind ``run_code`` (2 warm sandboxes, lazily created)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = SandboxPool(max_workers=4, warm=2)
        return _default


def run_code(code: str, timeout_s: float = 5.0, *, pool: SandboxPool | None = None) -> RunResult:
    """Run untrusted ``code`` once in a fresh sandbox (from ``pool`` or the default pool)."""
    return (pool or default_pool()).run(code, timeout_s)
