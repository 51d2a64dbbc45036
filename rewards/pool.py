"""RewardPool: score rollouts in long-lived worker processes with per-item timeouts.

Rewards run untrusted model output through parsers/solvers that can hang, blow up or crash
the interpreter, so they run in child processes: the parent measures each item's wall-clock
time, SIGKILLs and replaces a worker that overruns or dies, and records a failed result for
that item only. Every input gets exactly one result, in input order.

Workers are started (non-blocking) when the pool is constructed, so their ~0.5-1 s spawn and
import cost overlaps with whatever the caller does next (e.g. generation); ``score`` dispatches
to each worker as soon as it reports ready. Workers are daemonic, so a reward function cannot
itself use ``multiprocessing.Process`` (``subprocess`` is fine; a killed worker takes its
process group, and so such subprocesses, with it). POSIX only.

A reward that cannot be loaded inside the workers (import error, broken pickle) is a
configuration error: ``score`` raises RewardError instead of returning failed results.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from rewards.registry import RewardSpec
from rewards.schema import RewardError, RewardInput, RewardResult
from rewards.serialization import make_payload
from rewards.worker import worker_main

logger = logging.getLogger(__name__)

_MAX_WAIT_S = 0.25  # upper bound on one wait, so close() is noticed promptly
_MAX_START_FAILURES = 3  # consecutive worker deaths during start-up before giving up
_METRIC_KEYS = (
    "reward/num_scored",
    "reward/num_failed",
    "reward/num_timeouts",
    "reward/workers_replaced",
    "reward/score_time_s",
)


class _Worker:
    """Parent-side handle: process, pipe end, and what the worker is doing."""

    __slots__ = ("process", "conn", "state", "idx", "deadline")

    def __init__(self, process, conn, start_deadline: float) -> None:
        self.process = process
        self.conn = conn
        self.state = "starting"  # -> "idle" <-> "busy"
        self.idx: int | None = None
        self.deadline = start_deadline  # start-up deadline while starting, item deadline while busy


class RewardPool:
    """Process pool scoring RewardInputs with a reward spec or callable.

    ``score`` calls are serialised (one batch at a time); ``submit`` runs ``score`` on a
    pool-owned background thread. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        reward: RewardSpec,
        num_workers: int = 1,
        timeout_s: float = 5.0,
        failure_score: float = 0.0,
        start_method: str = "spawn",
        *,
        start_timeout_s: float = 120.0,
    ) -> None:
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0 or not start_timeout_s > 0:
            raise ValueError(f"timeouts must be > 0, got timeout_s={timeout_s}, start_timeout_s={start_timeout_s}")
        if not math.isfinite(float(failure_score)):
            raise ValueError(f"failure_score must be finite, got {failure_score}")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.failure_score = float(failure_score)
        self.start_timeout_s = float(start_timeout_s)
        self._payload = make_payload(reward)  # validates the spec here, with a clear error
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = []
        self._score_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._start_failures = 0
        self._batch_timeouts = 0  # per-batch counters, only touched under _score_lock
        self._batch_replaced = 0
        self._metrics_lock = threading.Lock()
        self._window = dict.fromkeys(_METRIC_KEYS, 0.0)
        self._totals = dict.fromkeys(_METRIC_KEYS, 0.0)
        # Registered before any worker exists, so a failure below still cleans up.
        self._finalizer = weakref.finalize(self, _shutdown_workers, self._workers)
        for _ in range(self.num_workers):
            self._workers.append(self._spawn())

    # ------------------------------------------------------------------ public API

    def score(self, items: Sequence[RewardInput]) -> list[RewardResult]:
        """Score ``items`` in parallel; blocks; returns one result per item, in order."""
        items = list(items)
        for item in items:
            if not isinstance(item, RewardInput):
                raise TypeError(f"RewardPool.score expects RewardInput items, got {type(item).__name__}")
        self._check_open()
        with self._score_lock:  # one batch at a time; time spent queueing here is not counted
            self._check_open()
            start = time.monotonic()
            results = self._run(items)
            elapsed = time.monotonic() - start
            timeouts, replaced = self._batch_timeouts, self._batch_replaced
        self._record(
            {
                "reward/num_scored": len(results),
                "reward/num_failed": sum(r.failed for r in results),
                "reward/num_timeouts": timeouts,
                "reward/workers_replaced": replaced,
                "reward/score_time_s": elapsed,
            }
        )
        return results

    def submit(self, items: Sequence[RewardInput]) -> "Future[list[RewardResult]]":
        """Run ``score(items)`` on the pool's background thread; batches run in submission order."""
        self._check_open()
        items = list(items)  # snapshot: the caller may reuse its list
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-pool")
            return self._executor.submit(self.score, items)

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the previous call (then reset), plus throughput over that window."""
        with self._metrics_lock:
            window = self._window
            self._window = dict.fromkeys(_METRIC_KEYS, 0.0)
        return _with_throughput(window)

    @property
    def stats(self) -> dict[str, float]:
        """Cumulative counters since construction (not reset by pop_metrics)."""
        with self._metrics_lock:
            return _with_throughput(dict(self._totals))

    @property
    def worker_pids(self) -> list[int]:
        """Current worker process ids (they change when workers are replaced); for monitoring."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Stop accepting work and kill the workers.

        An in-flight batch returns promptly with 'pool closed' failures for its unfinished
        items; batches still queued by ``submit`` are cancelled.
        """
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
        with self._score_lock:
            self._finalizer()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._closing.set()
            self._finalizer()
        except Exception:  # interpreter shutdown or a half-constructed object
            pass

    # ------------------------------------------------------------------ scheduling

    def _run(self, items: list[RewardInput]) -> list[RewardResult]:
        results: list[RewardResult | None] = [None] * len(items)
        queue = collections.deque(range(len(items)))
        self._batch_timeouts = self._batch_replaced = 0
        try:
            while queue or any(w.state == "busy" for w in self._workers):
                if self._closing.is_set():
                    for i, r in enumerate(results):
                        if r is None:
                            results[i] = self._failure("pool closed")
                    for w in self._workers:
                        if w.state == "busy":  # no point waiting for close()'s grace period
                            _kill(w)
                    break
                self._dispatch(items, queue, results)
                self._wait_and_collect(results)
        except BaseException:
            # Abnormal exit (start-up failure, KeyboardInterrupt): drop in-flight work so no
            # stale result is read by the next batch.
            for i, w in enumerate(self._workers):
                if w.state == "busy":
                    self._replace(i)
            raise
        return results  # type: ignore[return-value]

    def _dispatch(self, items, queue, results) -> None:
        for i, w in enumerate(self._workers):
            while w.state == "idle" and queue:
                idx = queue.popleft()
                try:
                    w.conn.send((idx, items[idx]))
                except OSError:  # died while idle: not the item's fault, retry it elsewhere
                    queue.appendleft(idx)
                    logger.warning("reward worker pid=%s died while idle; replacing it", w.process.pid)
                    self._replace(i)
                    break
                except Exception as exc:  # the item itself cannot be pickled
                    results[idx] = self._failure(f"bad input: cannot send item: {type(exc).__name__}: {exc}")
                    continue
                w.state, w.idx, w.deadline = "busy", idx, time.monotonic() + self.timeout_s

    def _wait_and_collect(self, results) -> None:
        active = [w for w in self._workers if w.state in ("starting", "busy")]
        if not active:
            return
        now = time.monotonic()
        timeout = min(_MAX_WAIT_S, max(0.0, min(w.deadline for w in active) - now))
        waitables = [w.conn for w in active] + [w.process.sentinel for w in active]
        ready = set(mp_connection.wait(waitables, timeout))
        for i, w in enumerate(self._workers):
            if w in active and (w.conn in ready or w.process.sentinel in ready):
                self._handle_event(i, results)
        now = time.monotonic()
        for i, w in enumerate(self._workers):
            if w.state == "busy" and now >= w.deadline:
                results[w.idx] = self._failure(f"timeout after {self.timeout_s}s")
                self._batch_timeouts += 1
                logger.debug("reward item %s timed out; killing worker pid=%s", w.idx, w.process.pid)
                self._replace(i)
            elif w.state == "starting" and now >= w.deadline:
                self._start_failed(i, f"not ready after {self.start_timeout_s}s")

    def _handle_event(self, i: int, results) -> None:
        w = self._workers[i]
        if w.conn.poll():  # a message, or EOF
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                pass  # EOF: the worker is gone (or going); handled below
            except Exception as exc:  # message arrived whole but cannot be unpickled here
                if w.state == "busy":
                    results[w.idx] = self._failure(f"bad return type: result not unpicklable: {type(exc).__name__}: {exc}")
                    w.state, w.idx = "idle", None
                return
            else:
                self._handle_message(i, msg, results)
                return
        elif not mp_connection.wait([w.process.sentinel], 0):
            return  # spurious wake-up
        exitcode = _kill(w, wait_exit_s=1.0)  # it is dead already: this only reaps (and kills its group)
        if w.state == "starting":
            self._start_failed(i, f"exited during start-up (exit code {exitcode})")
            return
        results[w.idx] = self._failure(f"worker died (exit code {exitcode})")
        logger.debug("reward worker pid=%s died on item %s (exit code %s)", w.process.pid, w.idx, exitcode)
        self._replace(i)

    def _handle_message(self, i: int, msg, results) -> None:
        w = self._workers[i]
        kind = msg[0]
        if kind == "ready" and w.state == "starting":
            w.state = "idle"
            self._start_failures = 0
        elif kind == "result" and w.state == "busy" and msg[1] == w.idx:
            results[w.idx] = msg[2]
            w.state, w.idx = "idle", None
        elif kind == "init_error":
            raise RewardError(f"reward worker failed to load the reward: {msg[1]}")
        else:  # cannot happen with a well-behaved worker; never trust it afterwards
            if w.state == "busy":
                results[w.idx] = self._failure(f"protocol error: unexpected message {kind!r}")
            self._replace(i)

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child_conn, self._payload, self.failure_score),
            name="reward-worker",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn, time.monotonic() + self.start_timeout_s)

    def _replace(self, i: int) -> None:
        _kill(self._workers[i])
        self._workers[i] = self._spawn()
        self._batch_replaced += 1

    def _start_failed(self, i: int, why: str) -> None:
        self._start_failures += 1
        logger.warning("reward worker %s (%d consecutive start failures)", why, self._start_failures)
        give_up = self._start_failures >= _MAX_START_FAILURES
        if give_up:
            self._start_failures = 0  # a later call starts counting afresh
        self._replace(i)
        if give_up:
            raise RewardError(f"reward workers keep failing to start; last one {why}")

    # ------------------------------------------------------------------ helpers

    def _failure(self, reason: str) -> RewardResult:
        return RewardResult.failure(reason, self.failure_score)

    def _check_open(self) -> None:
        if self._closed or self._closing.is_set():
            raise RewardError("RewardPool is closed")

    def _record(self, delta: dict[str, float]) -> None:
        with self._metrics_lock:
            for key, value in delta.items():
                self._window[key] += value
                self._totals[key] += value


def _with_throughput(counters: dict[str, float]) -> dict[str, float]:
    elapsed = counters["reward/score_time_s"]
    counters["reward/throughput_per_s"] = counters["reward/num_scored"] / elapsed if elapsed > 0 else 0.0
    return counters


def _kill(worker: _Worker, wait_exit_s: float = 0.0) -> int | None:
    """SIGKILL the worker and anything it started (its process group), reap it, return its exit code.

    ``wait_exit_s`` first gives a worker that is already exiting time to finish, so its own
    exit code is reported rather than our SIGKILL.
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
    process.join(5.0)
    try:
        worker.conn.close()
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


def _shutdown_workers(workers: list[_Worker], grace_s: float = 1.0) -> None:
    """Ask idle workers to exit, give them ``grace_s``, SIGKILL the rest (busy, starting, stuck)."""
    for w in workers:
        if w.state == "idle":
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        else:
            _kill(w)
        try:
            w.conn.close()
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    for w in workers:
        mp_connection.wait([w.process.sentinel], max(0.0, deadline - time.monotonic()))
    for w in workers:
        _kill(w)
    workers.clear()
