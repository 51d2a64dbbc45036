"""Reward workers forked from a zygote: a worker start is one fork, not a multiprocessing start.

Why: a step where many items hang needs one new worker per hung item (each hung worker keeps its
item until the deadline). A multiprocessing start through the forkserver cost ~8 ms of CPU here
(the parent pickles preparation data, waits for the server's fork, probes the resource tracker
and polls every child; the child re-runs the parent's ``__main__`` and unpickles the reward), so
128 hung items of 256 took ~1.2 s of starts on 2 cores before the last one's clock began
(benchmarks/hanging_rewards.py). The zygote is one process, started the multiprocessing way,
that loads the reward once; a worker is a plain ``os.fork`` of it (128 starts: 2.7-4.0 ms of
CPU each, 0.2-0.3 s in all, against 8.3 ms and 0.57 s through multiprocessing), which hands the
pool its two ends (a duplex connection and a sentinel pipe that reads EOF when the worker exits)
over the zygote's socket (SCM_RIGHTS).

The zygote is single-threaded (it forks), never scores anything, reaps its children and reports
each exit code to the pool. It exits when the pool says so or once the pool's process is gone
(the lifeline, which its workers watch too). Its workers outlive it: a dead zygote costs no
item; the pool starts another. Like the ``fork`` start method, whatever the reward's module
set up when it was imported is shared by every worker (rlcore's own rewards start nothing at
import; the sympy subprocess pool is made per process, on first use).

Protocol on the zygote's connection:
  pool -> zygote: ``("spawn", n, env)``, or ``None`` to exit.
  zygote -> pool: ``("ready", pid, batched)`` once the reward is loaded, or ``("init_error",
  text)``; then ``("spawned", pid)`` followed by two file descriptors, ``("exit", pid, code)``
  (``code`` as multiprocessing gives it: the exit status, or minus the signal number), and
  ``("spawn_failed", n, text)`` when fork failed and the last n workers asked for will not come.
"""
from __future__ import annotations

import collections
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import time
import traceback
from multiprocessing import reduction

from rewards.registry import is_batched
from rewards.serialization import Payload, load_payload
from rewards.worker import PARENT_POLL_S, detach_from_terminal_signals, send_quietly, serve, start_parent_watchdog


# ----------------------------------------------------------------------------- zygote process


def zygote_main(ctl, payload: Payload, failure_score: float, lifeline, env: dict) -> None:
    detach_from_terminal_signals()
    _set_env(env)
    try:
        fn = load_payload(payload)
        batched = is_batched(fn)
    except BaseException as exc:
        send_quietly(ctl, ("init_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    if not send_quietly(ctl, ("ready", os.getpid(), batched)):
        return
    wake_r, wake_w = os.pipe()  # SIGCHLD wakes the wait below
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sock = socket.socket(fileno=os.dup(ctl.fileno()))  # the same socket, for sendmsg with fds
    try:
        while True:
            ready = mp_connection.wait([ctl, lifeline, wake_r], PARENT_POLL_S)
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            if not _report_exits(ctl) or lifeline in ready:
                return
            if ctl in ready:
                try:
                    msg = ctl.recv()
                except (EOFError, OSError):
                    return
                if msg is None:
                    return
                _, n, env = msg
                for i in range(n):
                    try:
                        if not _fork_worker(ctl, sock, (wake_r, wake_w), fn, batched, failure_score, lifeline, env):
                            return
                    except OSError as exc:  # out of processes or memory: say so, the pool decides
                        if not send_quietly(ctl, ("spawn_failed", n - i, f"{type(exc).__name__}: {exc}")):
                            return
                        break
    finally:
        signal.set_wakeup_fd(-1)


def _report_exits(ctl) -> bool:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return True
        if not send_quietly(ctl, ("exit", pid, os.waitstatus_to_exitcode(status))):
            return False


def _fork_worker(ctl, sock, wake: tuple[int, int], fn, batched: bool, failure_score: float, lifeline,
                 env: dict) -> bool:
    ours, theirs = socket.socketpair()
    sentinel_r, sentinel_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: keep only its own ends and the lifeline
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (sentinel_r, *wake):
                os.close(fd)
            ours.close()
            sock.close()
            ctl.close()
            os.setpgrp()
            _set_env(env)
            start_parent_watchdog(lifeline)
            conn = mp_connection.Connection(theirs.detach())
            if send_quietly(conn, ("ready", os.getpid(), batched)):
                serve(conn, fn, batched, failure_score)
        except BaseException:
            code = 1
            traceback.print_exc()
        finally:
            os._exit(code)  # never the zygote's atexit handlers or finalizers
    try:
        os.setpgid(pid, pid)  # also done by the worker; whichever runs first, a kill finds the group
    except OSError:
        pass
    os.close(sentinel_w)
    theirs.close()
    try:
        ok = send_quietly(ctl, ("spawned", pid))
        if ok:
            reduction.sendfds(sock, [ours.fileno(), sentinel_r])
    except OSError:
        ok = False
    finally:
        ours.close()
        os.close(sentinel_r)
    return ok


def _set_env(env: dict | None) -> None:
    """The pool's environment when it asked (a forked process would otherwise keep the zygote's)."""
    if env is not None and env != os.environ:
        os.environ.clear()
        os.environ.update(env)


# ----------------------------------------------------------------------------- pool side


class ForkedProcess:
    """What the pool knows of one worker: pid, sentinel (EOF once it exited) and exit code,
    which the zygote reports once it has reaped the worker."""

    __slots__ = ("pid", "sentinel", "exitcode", "closed", "_zygote")

    def __init__(self, pid: int, sentinel: int, zygote: "Zygote") -> None:
        self.pid, self.sentinel, self.exitcode, self._zygote = pid, sentinel, None, zygote
        self.closed = False

    def kill(self) -> None:
        """SIGKILL the worker's process group unless its exit was reported (then its pid may be reused)."""
        if self.exitcode is not None or self.closed:
            return
        for kill, target in ((os.killpg, self.pid), (os.kill, self.pid)):
            try:
                kill(target, signal.SIGKILL)
                return
            except OSError:
                continue

    def join(self, timeout_s: float) -> None:
        """Wait until the zygote has reported the exit code (or ``timeout_s`` passed)."""
        self._zygote.wait_exit(self, timeout_s)

    def close(self) -> None:
        """Close the sentinel, once (its number may belong to something else afterwards)."""
        if not self.closed:
            self.closed = True
            os.close(self.sentinel)


class Zygote:
    """Parent side: starts the zygote, asks it for workers, and turns its messages into events."""

    def __init__(self, ctx, payload: Payload, failure_score: float, start_timeout_s: float, lifeline) -> None:
        """``lifeline``: the read end of the pool's pipe that it never writes to and closes when it
        goes; one for every zygote of a pool, since a zygote's workers outlive it."""
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=zygote_main, name="reward-zygote", daemon=True,
                                   args=(child_conn, payload, failure_score, lifeline, dict(os.environ)))
        try:
            self.process.start()
        except BaseException:
            self.conn.close()
            raise
        finally:
            child_conn.close()
        self.closed = False
        self._sock = socket.socket(fileno=os.dup(self.conn.fileno()))
        self.ready = False
        self.batched = False
        self.start_deadline = time.monotonic() + start_timeout_s
        self.pending = 0  # workers asked for and not handed over yet
        self.alive: dict[int, ForkedProcess] = {}  # pid -> worker whose exit is not reported yet
        self.spawned: collections.deque[tuple[ForkedProcess, mp_connection.Connection]] = collections.deque()

    def request(self, n: int) -> None:
        if n > 0:
            self.conn.send(("spawn", n, dict(os.environ)))
            self.pending += n

    def waitables(self) -> list:
        return [self.conn, self.process.sentinel]

    def pump(self) -> None:
        """Read every message waiting; raises ZygoteError when the zygote is gone or failed to load."""
        while True:
            try:
                if not self.conn.poll():
                    break
                msg = self.conn.recv()
            except (EOFError, OSError) as exc:
                raise ZygoteGone(f"reward zygote pid={self.process.pid} is gone ({type(exc).__name__})") from None
            kind = msg[0]
            if kind == "ready":
                self.ready, self.batched = True, bool(msg[2])
            elif kind == "init_error":
                raise ZygoteInitError(msg[1])
            elif kind == "spawned":
                try:
                    fds = reduction.recvfds(self._sock, 2)
                except (EOFError, OSError, RuntimeError) as exc:
                    raise ZygoteGone(f"reward zygote pid={self.process.pid} is gone ({type(exc).__name__})") from None
                proc = ForkedProcess(msg[1], fds[1], self)
                self.alive[proc.pid] = proc
                self.spawned.append((proc, mp_connection.Connection(fds[0])))
                self.pending -= 1
            elif kind == "spawn_failed":
                self.pending -= msg[1]
                raise ZygoteSpawnFailed(msg[2])
            elif kind == "exit":
                proc = self.alive.pop(msg[1], None)
                if proc is not None:
                    proc.exitcode = msg[2]
        if not self.process.is_alive():
            raise ZygoteGone(f"reward zygote pid={self.process.pid} exited (exit code {self.process.exitcode})")

    def wait_exit(self, proc: ForkedProcess, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while proc.exitcode is None and proc.pid in self.alive and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0 or not mp_connection.wait([self.conn], left):
                return
            try:
                self.pump()
            except ZygoteError:
                return  # nobody will report it now; the pool finds the zygote gone on its next wait

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        send_quietly(self.conn, None)
        for end in (self.conn, self._sock):
            try:
                end.close()
            except OSError:
                pass
        self.process.join(1.0)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(1.0)


class ZygoteError(RuntimeError):
    pass


class ZygoteGone(ZygoteError):
    """The zygote died or exited: start another (the workers it made live on)."""


class ZygoteSpawnFailed(ZygoteError):
    """fork failed in the zygote (out of processes or memory)."""


class ZygoteInitError(ZygoteError):
    """The reward cannot be loaded in a worker process: a configuration error."""
