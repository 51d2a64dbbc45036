"""A small persistent pool of sympy worker *subprocesses* with a hard per-check timeout.

Why subprocesses: sympy can run for minutes on hostile input, and ``signal.alarm`` only works
in the main thread (rewards run in threads and in daemonic pool workers). A worker that
overruns is SIGKILLed and replaced; the caller gets a "timeout" verdict, never a hang.
Why ``subprocess`` and not ``multiprocessing``: reward code already runs inside daemonic
``RewardPool`` workers, which may not have multiprocessing children. The workers stay in the
caller's process group (so killing a reward worker's group takes them along) and exit when
their stdin closes or their parent disappears.

Only our own tuple ASTs (numbers, names, tags) travel to the worker, pickled by us; the worker
builds sympy objects from them directly, so no model text is ever handed to ``sympify``/``eval``.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time

_HEADER = struct.Struct("<I")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Proc:
    __slots__ = ("popen", "ready", "started")

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "rewards.math._sympy_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=_ROOT,
            close_fds=True,
        )
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            self.popen.kill()
        except OSError:
            pass
        for stream in (self.popen.stdin, self.popen.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.popen.wait(timeout=5)
        except Exception:
            pass


class SympyPool:
    """``run(op, payload, timeout_s)`` -> ("ok", value) | ("timeout", None) | ("error", message)
    | ("sympy_error", message) (sympy raised on a check the verdict depends on)."""

    def __init__(self, size: int = 1, start_timeout_s: float = 60.0) -> None:
        self.size = max(1, int(size))
        self.start_timeout_s = float(start_timeout_s)
        self._lock = threading.Condition()
        self._idle: list[_Proc] = []
        self._count = 0
        self._pid = os.getpid()
        self.stats = {"calls": 0, "timeouts": 0, "replaced": 0, "errors": 0}

    def prestart(self) -> None:
        """Start the workers now (non-blocking) so their ~1 s sympy import overlaps other work."""
        with self._lock:
            self._check_fork()
            while self._count < self.size:
                self._idle.append(_Proc())
                self._count += 1

    def run(self, op: str, payload, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        proc = self._acquire(deadline)
        if proc is None:
            return ("timeout", None)
        self.stats["calls"] += 1
        ok = False
        try:
            if not proc.ready:  # start-up time is not charged to the check
                if self._read(proc, proc.started + self.start_timeout_s) != ("ready",):
                    raise RuntimeError("worker did not start")
                proc.ready = True
                deadline = time.monotonic() + timeout_s
            data = pickle.dumps((op, payload), protocol=pickle.HIGHEST_PROTOCOL)
            proc.popen.stdin.write(_HEADER.pack(len(data)) + data)
            proc.popen.stdin.flush()
            reply = self._read(proc, deadline)
            if reply is None:
                self.stats["timeouts"] += 1
                return ("timeout", None)
            ok = True
            return reply
        except Exception as exc:  # broken pipe, dead worker, bad reply
            self.stats["errors"] += 1
            return ("error", f"{type(exc).__name__}: {exc}")
        finally:
            self._release(proc, healthy=ok)

    def close(self) -> None:
        with self._lock:
            procs, self._idle = self._idle, []
            self._count = 0
        for p in procs:
            p.kill()

    # ------------------------------------------------------------------ internals
    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked: the handles belong to the parent
            self._pid, self._idle, self._count = os.getpid(), [], 0

    def _acquire(self, deadline: float):
        with self._lock:
            self._check_fork()
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)
        try:
            return _Proc()
        except Exception:
            with self._lock:
                self._count -= 1
                self._lock.notify()
            raise

    def _release(self, proc: _Proc, healthy: bool) -> None:
        if not healthy:
            proc.kill()
            self.stats["replaced"] += 1
        with self._lock:
            if os.getpid() != self._pid:
                return
            if healthy:
                self._idle.append(proc)
            else:
                try:
                    self._idle.append(_Proc())  # replace now, so it warms up before the next check
                except Exception:
                    self._count -= 1
            self._lock.notify()

    @staticmethod
    def _read(proc: _Proc, deadline: float):
        """One framed reply, or None at the deadline."""
        fd = proc.popen.stdout.fileno()
        buf = b""
        need = _HEADER.size
        header_done = False
        while len(buf) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, max(need - len(buf), 1))
            if not chunk:
                raise EOFError("worker exited")
            buf += chunk
            if not header_done and len(buf) >= _HEADER.size:
                need = _HEADER.size + _HEADER.unpack(buf[: _HEADER.size])[0]
                header_done = True
        return pickle.loads(buf[_HEADER.size :])


_POOL: SympyPool | None = None
_POOL_LOCK = threading.Lock()


def get_pool() -> SympyPool:
    """The process-wide pool (size from ``RLCORE_SYMPY_WORKERS``, default 1)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = SympyPool(size=int(os.environ.get("RLCORE_SYMPY_WORKERS", "1")))
            atexit.register(_POOL.close)
        return _POOL
