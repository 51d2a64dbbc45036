"""A reward worker process: its main loop (child side) and its start/kill helpers (parent side).

Protocol over a duplex Pipe:
  parent -> child: ``("score", [(idx, RewardInput), ...])`` (a chunk), or ``None`` to exit; to a
  busy single-item worker, ``("cut",)``: stop this chunk before the next item.
  child -> parent: ``("ready", pid, batched)`` once the reward is loaded, ``("init_error", text)``
  if it cannot be loaded, then ``("results", [(idx, pickled RewardResult), ...])`` messages, and
  ``("cut", [idx, ...])`` once a cut is seen (before its next item, or when idle): the items of
  the chunk it did not start; nothing more will come for that chunk.

A single-item reward is scored item by item and each result is sent as soon as it exists, so
the parent knows which item is running (the first one without a result) and can time it and
blame it alone. A batched reward gets the whole chunk in one call and answers in one message;
if that call raises, the worker says ``("fallback",)`` and scores the chunk item by item.
Results are pickled one by one, so one unpicklable result costs only its own item.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import threading
import time
import traceback

from rewards.registry import call_batched, call_reward, is_batched
from rewards.schema import RewardResult
from rewards.serialization import Payload, load_payload

PARENT_POLL_S = 0.5


def worker_main(conn, payload: Payload, failure_score: float, lifeline=None, env: dict | None = None) -> None:
    """Load the reward once, then score chunks until EOF/None or until the pool's process disappears.

    ``env`` is the pool's environment when it started this worker: a forkserver child would
    otherwise see the forkserver's (frozen when that server started), not the pool's current one.
    """
    _detach_from_terminal_signals()
    if env is not None and env != os.environ:
        os.environ.clear()
        os.environ.update(env)
    # Baseline is whoever our parent is now: the pool's process (spawn/fork) or the forkserver,
    # which outlives the pool while any worker lives: the lifeline covers that case.
    _start_parent_watchdog(os.getppid(), lifeline)
    try:
        fn = load_payload(payload)
        batched = is_batched(fn)
    except BaseException as exc:
        _send_quietly(conn, ("init_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    if not _send_quietly(conn, ("ready", os.getpid(), batched)):
        return
    loop = _LazyLoop()
    dropped: list[int] = []  # the items of the last chunk left unscored because of a cut
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent closed its end or died
            return
        if msg is None:
            return
        if msg[0] == "cut":  # we were set aside: say which items we did not score
            if not _send_quietly(conn, ("cut", dropped)):
                return
            dropped = []
            continue
        _, chunk = msg
        if batched:
            items = [item for _, item in chunk]
            results = call_batched(fn, items, failure_score, loop, on_fallback=lambda: _send_quietly(conn, ("fallback",)))
            if not _send_results(conn, [(idx, r) for (idx, _), r in zip(chunk, results)], failure_score):
                return
        else:
            for pos, (idx, item) in enumerate(chunk):
                if conn.poll():  # a "cut" (the only message sent to a busy worker): read above
                    dropped = [i for i, _ in chunk[pos:]]
                    break
                if not _send_results(conn, [(idx, call_reward(fn, item, failure_score, loop))], failure_score):
                    return


class _LazyLoop:
    """One event loop per worker for async rewards, made on first use (sync rewards never import asyncio)."""

    def __init__(self) -> None:
        self._loop = None

    def run_until_complete(self, awaitable):
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)


def _send_results(conn, results, failure_score: float) -> bool:
    out = []
    for idx, result in results:
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # the result (its info dict) could not be pickled
            reason = f"bad return type: result not picklable: {type(exc).__name__}: {exc}"
            data = pickle.dumps(RewardResult.failure(reason, failure_score))
        out.append((idx, data))
    return _send_quietly(conn, ("results", out))


def _send_quietly(conn, msg) -> bool:
    """Send, returning False if the parent has gone away (pool closed while we started up)."""
    try:
        conn.send(msg)
        return True
    except OSError:
        return False


def _detach_from_terminal_signals() -> None:
    """Own process group + ignore Ctrl-C: the parent decides when workers stop.

    The process group also lets the parent kill a hung reward together with any
    subprocesses it started (``os.killpg``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgrp()
    except OSError:
        pass


def _start_parent_watchdog(parent_pid: int, lifeline=None) -> None:
    """Exit once the pool's process is gone, even while a reward call is hung.

    Two signs, either enough: we were reparented (our parent died: spawn/fork), or the read end
    of ``lifeline``, whose only writer is the pool's process, hit EOF (forkserver: our parent is
    the server, which stays up while any worker lives). The pool never writes to the lifeline,
    so "readable" means EOF. A reward stuck in C code holding the GIL delays this until it
    returns; the parent's per-item timeout covers that case while the parent lives.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            if lifeline is None:
                time.sleep(PARENT_POLL_S)
            elif lifeline.poll(PARENT_POLL_S):
                os._exit(0)

    threading.Thread(target=watch, name="reward-parent-watchdog", daemon=True).start()


# ----------------------------------------------------------------------------- parent side


def mp_context(start_method: str):
    """The multiprocessing context for workers. A forkserver is also told to import this package
    and cloudpickle (which unpickles by-value rewards) before it forks anything, so that a worker
    starts in ~10 ms of CPU rather than ~20 (~150 with spawn). This only works before the server
    starts (once per process); if it already runs without them, workers just start slower."""
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        from multiprocessing import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        missing = [m for m in ("rewards.worker", "cloudpickle") if m not in preload]
        if missing:
            ctx.set_forkserver_preload(preload + missing)  # a module that fails to import is skipped
    return ctx


def start_worker(ctx, payload: Payload, failure_score: float, start_timeout_s: float) -> "WorkerHandle":
    """Start a worker process (non-blocking); it says "ready" once its reward is loaded."""
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    lifeline_r, lifeline_w = ctx.Pipe(duplex=False)
    args = (child_conn, payload, failure_score, lifeline_r, dict(os.environ))
    process = ctx.Process(target=worker_main, args=args, name="reward-worker", daemon=True)
    try:
        process.start()
    except BaseException:
        lifeline_w.close()
        parent_conn.close()
        raise
    finally:
        child_conn.close()
        lifeline_r.close()
    return WorkerHandle(process, parent_conn, lifeline_w, time.monotonic() + start_timeout_s)


class WorkerHandle:
    """Parent side: the process, its pipe ends, and what the pool has it doing."""

    __slots__ = ("process", "conn", "lifeline", "state", "chunk", "batched", "deadline", "started", "aside", "cut")

    def __init__(self, process, conn, lifeline, start_deadline: float) -> None:
        self.process = process
        self.conn = conn
        self.lifeline = lifeline  # write end, never written: closing it (or dying) tells the worker to exit
        self.state = "starting"  # -> "idle" <-> "busy"
        self.chunk: list[int] = []  # indices sent and not answered yet, in order
        self.batched = False  # told by the worker once its reward is loaded
        self.deadline = start_deadline  # start-up deadline while starting, item/chunk deadline while busy
        self.started = 0.0  # when the running item (batched: chunk) started
        self.aside = False  # stalled and set aside by the pool: finishes its item(s), then rejoins
        self.cut = False  # told to drop the rest of its chunk, not acknowledged yet


def kill_worker(worker: WorkerHandle, wait_exit_s: float = 0.0, reap: bool = True) -> int | None:
    """SIGKILL the worker and anything it started (its process group), reap it, return its exit code.

    ``wait_exit_s`` first gives a worker that is already exiting time to finish, so its own
    exit code is reported rather than our SIGKILL. ``reap=False`` does not wait for the exit
    to be confirmed (a forkserver may take tens of ms to report it on a busy machine, and the
    pool may kill dozens of hung workers at once); multiprocessing reaps such a process on a
    later start or at exit, and its exit code is then unknown here (None).
    """
    process = worker.process
    if wait_exit_s > 0:
        mp_connection.wait([process.sentinel], wait_exit_s)
    if process.pid is not None and _pid_still_held(process):
        try:
            # The worker made itself group leader. Its pid is still held (running or zombie),
            # so the group id cannot belong to an unrelated process.
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass  # group not set up yet (still starting) or already empty
    if process.pid is not None and process.exitcode is None:
        try:
            process.kill()
        except (OSError, ValueError):
            pass
    if reap:
        process.join(5.0)
    for end in (worker.conn, worker.lifeline):
        try:
            end.close()
        except OSError:
            pass
    return process.exitcode


def _pid_still_held(process) -> bool:
    """True while the worker's pid cannot have been reused (running or zombie); does not reap it."""
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        # Not our child (forkserver start method: the server reaps it) or already reaped.
        return process.exitcode is None


def shutdown_workers(workers: list[WorkerHandle], grace_s: float = 1.0) -> None:
    """Ask idle workers to exit, give them ``grace_s``, SIGKILL the rest (busy, starting, stuck)."""
    for w in workers:
        if w.state == "idle":
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        else:
            kill_worker(w)
        try:
            w.conn.close()
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    for w in workers:
        mp_connection.wait([w.process.sentinel], max(0.0, deadline - time.monotonic()))
    for w in workers:
        kill_worker(w)
    workers.clear()
