"""A reward worker process: its main loop (child side) and its kill helpers (parent side).

Workers are forked from a zygote that has loaded the reward (rewards/zygote.py). Protocol over
a worker's duplex connection:
  parent -> child: ``("score", [(idx, RewardInput), ...])`` (a chunk), or ``None`` to exit; to a
  busy single-item worker, ``("cut",)``: stop this chunk before the next item.
  child -> parent: ``("ready", pid, batched)`` first, then ``("results", [(idx, pickled
  RewardResult), ...])`` messages, and
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

from rewards.registry import call_batched, call_reward
from rewards.schema import RewardResult

PARENT_POLL_S = 0.5


def serve(conn, fn, batched: bool, failure_score: float) -> None:
    """Score chunks from ``conn`` with the loaded reward ``fn`` until EOF or None."""
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
            if not send_quietly(conn, ("cut", dropped)):
                return
            dropped = []
            continue
        _, chunk = msg
        if batched:
            items = [item for _, item in chunk]
            results = call_batched(fn, items, failure_score, loop, on_fallback=lambda: send_quietly(conn, ("fallback",)))
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
    return send_quietly(conn, ("results", out))


def send_quietly(conn, msg) -> bool:
    """Send, returning False if the parent has gone away (pool closed while we started up)."""
    try:
        conn.send(msg)
        return True
    except OSError:
        return False


def detach_from_terminal_signals() -> None:
    """Own process group + ignore Ctrl-C: the parent decides when workers stop.

    The process group also lets the parent kill a hung reward together with any
    subprocesses it started (``os.killpg``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgrp()
    except OSError:
        pass


def start_parent_watchdog(lifeline) -> None:
    """Exit once the pool's process is gone, even while a reward call is hung.

    The sign: the read end of ``lifeline``, whose only writer is the pool's process, hit EOF
    (our parent is the zygote, not the pool). The pool never writes to the lifeline, so
    "readable" means EOF. A reward stuck in C code holding the GIL delays this until it
    returns; the parent's per-item timeout covers that case while the parent lives.
    """

    def watch() -> None:
        lifeline.poll(None)
        os._exit(0)

    threading.Thread(target=watch, name="reward-parent-watchdog", daemon=True).start()


# ----------------------------------------------------------------------------- parent side


def mp_context(start_method: str):
    """The multiprocessing context for the zygote. A forkserver is also told to import this
    package and cloudpickle (which unpickles by-value rewards) before it forks anything. This
    only works before the server starts (once per process); if it already runs without them,
    the zygote just starts slower."""
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        from multiprocessing import forkserver

        preload = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["__main__"])
        missing = [m for m in ("rewards.zygote", "cloudpickle") if m not in preload]
        if missing:
            ctx.set_forkserver_preload(preload + missing)  # a module that fails to import is skipped
    return ctx


class WorkerHandle:
    """Parent side: the process, its pipe ends, and what the pool has it doing."""

    __slots__ = ("process", "conn", "state", "chunk", "batched", "deadline", "started", "aside", "cut")

    def __init__(self, process, conn, start_deadline: float) -> None:
        self.process = process  # a rewards.zygote.ForkedProcess
        self.conn = conn
        self.state = "starting"  # -> "idle" <-> "busy"
        self.chunk: list[int] = []  # indices sent and not answered yet, in order
        self.batched = False  # told by the worker once its reward is loaded
        self.deadline = start_deadline  # start-up deadline while starting, item/chunk deadline while busy
        self.started = 0.0  # when the running item (batched: chunk) started
        self.aside = False  # stalled and set aside by the pool: finishes its item(s), then rejoins
        self.cut = False  # told to drop the rest of its chunk, not acknowledged yet


def kill_worker(worker: WorkerHandle, wait_exit_s: float = 0.0, reap: bool = True) -> int | None:
    """SIGKILL the worker and anything it started (its process group), close our ends of it, and
    return its exit code (None when not known yet).

    ``wait_exit_s`` first gives a worker that is already exiting time to finish, so its own exit
    code is reported rather than our SIGKILL. ``reap`` waits (up to 5 s) for the zygote to
    report the exit code; the pool skips that when it kills dozens of hung workers at once.
    """
    process = worker.process
    if wait_exit_s > 0:
        mp_connection.wait([process.sentinel], wait_exit_s)
    process.kill()
    if reap:
        process.join(5.0)
    try:
        worker.conn.close()
    except OSError:
        pass
    process.close()
    return process.exitcode


def shutdown_workers(workers: list[WorkerHandle], grace_s: float = 1.0) -> None:
    """Ask idle workers to exit, give them ``grace_s``, SIGKILL the rest (busy, starting, stuck)."""
    for w in workers:
        if w.state == "idle":
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        else:
            w.process.kill()
    deadline = time.monotonic() + grace_s
    for w in workers:
        if not w.process.closed:
            mp_connection.wait([w.process.sentinel], max(0.0, deadline - time.monotonic()))
    for w in workers:
        kill_worker(w, reap=False)
    workers.clear()
