"""RewardPool: score rollouts in long-lived worker processes, in chunks, with per-item timeouts.

Rewards run untrusted model output through parsers/solvers that can hang, blow up or crash
the interpreter, so they run in child processes: the parent measures each item's wall-clock
time, SIGKILLs a worker that overruns or dies, and records a failed result for that item only.
Every input gets exactly one result, in input order.

Work goes out in chunks (up to ``batch_size`` items per message), so a worker never waits for
a pipe round trip between items. A single-item reward streams one result per item, so the
parent always knows which item is running: a hang or crash fails that item, and the rest of
its chunk is re-queued. A batched reward answers a chunk in one call, with a budget of
``timeout_s`` per item; if it hangs or crashes, the chunk's items are retried one at a time,
so the culprit fails alone. Failures are counted by kind (exception, timeout, crash,
bad_return, other) in ``pop_metrics``.

Hung items time out together, not one after another. When an item has run far longer than
items usually take (``_STALL_FACTOR`` x the recent median, at least ``_STALL_FLOOR_S``) while
other work waits, its worker is *set aside*: it keeps that item, whose deadline still counts
from when the item started, a warm spare takes its place at once, and the rest of its chunk
goes back to the queue. A set-aside worker rejoins as a spare once its item finishes (a slow
item keeps its score), or is killed at the deadline. Each worker set aside lets the call run
one more worker (up to ``_MAX_EXTRA``), so that further hangs are found in parallel rather than
one stall after another. However many items hang (up to ``_MAX_ASIDE`` at once), each waits in
its own process and all their clocks run together: a call costs about one ``timeout_s`` more
than a clean one, plus a worker start per hung item. Hence the zygote (rewards/zygote.py): a
worker is a fork of a process that has loaded the reward already: 3-4 ms of CPU instead of the
~8 ms of a multiprocessing start, so 256 of 256 items hanging for a 2 s timeout cost 2.7-2.8 s
here (benchmarks/hanging_rewards.py).

The zygote is started when the pool is constructed and workers are asked of it at once
(non-blocking), so their start-up overlaps with whatever the caller does next (e.g.
generation); ``score`` dispatches to each worker as soon as it reports ready. A dead zygote is
replaced and costs nothing (its workers live on). Workers are daemonic, so a reward function
cannot itself use ``multiprocessing.Process`` (``subprocess`` is fine; a killed worker takes
its process group, and so such subprocesses, with it). POSIX only.

A reward that cannot be loaded inside the workers (import error, broken pickle) is a
configuration error: ``score`` raises RewardError instead of returning failed results.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing.connection as mp_connection
import pickle
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.reduction import ForkingPickler
from typing import Sequence

from rewards.registry import RewardSpec
from rewards.schema import RewardError, RewardInput, RewardResult
from rewards.serialization import make_payload
from rewards.worker import WorkerHandle, kill_worker, mp_context, shutdown_workers
from rewards.zygote import Zygote, ZygoteGone, ZygoteInitError, ZygoteSpawnFailed

logger = logging.getLogger(__name__)

_MAX_WAIT_S = 0.25  # upper bound on one wait, so close() is noticed promptly
_MAX_START_FAILURES = 3  # consecutive worker deaths during start-up before giving up
_STALL_FLOOR_S = 0.01  # never set a worker aside sooner than this into an item...
_STALL_FACTOR = 4.0  # ...nor before this many times the median of recent item times
_RECENT_ITEMS = 32  # item times the median is taken over
_MIN_HISTORY = 4  # before that many, "usual" is unknown: stall after timeout_s / 4
_MAX_ASIDE = 256  # set-aside workers at once (a bound on processes, ~8 MB each); past it, stalls wait
_MAX_EXTRA = 8  # extra workers a call may run once it has seen stalls
FAILURE_KINDS = ("exception", "timeout", "crash", "bad_return", "other")
_METRIC_KEYS = (
    "reward/num_scored",
    "reward/num_failed",
    "reward/num_timeouts",
    "reward/workers_replaced",
    "reward/score_time_s",
    "reward/round_trips",  # chunks sent to workers
    "reward/retried",  # items re-queued after another item's hang/crash (not failures)
    "reward/set_aside",  # workers set aside on a stalled item (it then hung, or was just slow)
) + tuple(f"reward/failed_{kind}" for kind in FAILURE_KINDS)


def failure_kind(reason: str | None) -> str:
    """Classify a failed result's reason into one of FAILURE_KINDS (for metrics)."""
    reason = reason or ""
    if reason.startswith("exception:"):
        return "exception"
    if reason.startswith("timeout"):
        return "timeout"
    if reason.startswith("worker died"):
        return "crash"
    if reason.startswith(("bad return type", "non-finite score")):
        return "bad_return"
    return "other"


class _Job:
    """One ``score`` call: inputs, results so far, and what is left to send."""

    def __init__(self, items: list[RewardInput]) -> None:
        self.items = items
        self.results: list[RewardResult | None] = [None] * len(items)
        self.queue = collections.deque(range(len(items)))  # sent in chunks
        self.solo: collections.deque[int] = collections.deque()  # suspects: sent one at a time


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
        start_method: str = "forkserver",
        *,
        batch_size: int = 16,
        start_timeout_s: float = 120.0,
    ) -> None:
        if int(num_workers) < 1 or int(batch_size) < 1:
            raise ValueError(f"num_workers and batch_size must be >= 1, got {num_workers}, {batch_size}")
        if not timeout_s > 0 or not start_timeout_s > 0:
            raise ValueError(f"timeouts must be > 0, got timeout_s={timeout_s}, start_timeout_s={start_timeout_s}")
        if not math.isfinite(float(failure_score)):
            raise ValueError(f"failure_score must be finite, got {failure_score}")
        self.num_workers = int(num_workers)
        self.batch_size = int(batch_size)
        self.timeout_s = float(timeout_s)
        self.failure_score = float(failure_score)
        self.start_timeout_s = float(start_timeout_s)
        self._payload = make_payload(reward)  # validates the spec here, with a clear error
        self._ctx = mp_context(start_method)
        self._workers: list[WorkerHandle] = []  # all live ones: num_workers + 1 spare, plus any set aside
        self._zygote: list[Zygote] = []  # the one that forks workers (a list: the finalizer holds it)
        # Never written; closing it (or dying) tells the zygotes and all their workers to exit.
        self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
        self._recent: collections.deque[float] = collections.deque(maxlen=_RECENT_ITEMS)  # item times (s)
        self._stall_s = max(_STALL_FLOOR_S, self.timeout_s / 4)  # until _MIN_HISTORY item times are known
        self._score_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._start_failures = 0
        self._counts: collections.Counter = collections.Counter()  # per batch, only touched under _score_lock
        self._metrics_lock = threading.Lock()
        self._window = dict.fromkeys(_METRIC_KEYS, 0.0)
        self._totals = dict.fromkeys(_METRIC_KEYS, 0.0)
        # Registered before any worker exists, so a failure below still cleans up.
        self._finalizer = weakref.finalize(self, _shut_down, self._workers, self._zygote,
                                           (self._lifeline_r, self._lifeline_w))
        self._top_up()

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
            results = self._run(_Job(items))
            elapsed = time.monotonic() - start
            counts = dict(self._counts)
        kinds = collections.Counter(failure_kind(r.reason) for r in results if r.failed)
        if kinds:
            first = next(r.reason for r in results if r.failed)
            logger.info("reward: %d of %d items failed %s; first: %s", sum(kinds.values()), len(results), dict(kinds), first)
        self._record(
            {
                "reward/num_scored": len(results),
                "reward/num_failed": sum(kinds.values()),
                "reward/num_timeouts": kinds["timeout"],
                "reward/workers_replaced": counts.get("replaced", 0),
                "reward/score_time_s": elapsed,
                "reward/round_trips": counts.get("round_trips", 0),
                "reward/retried": counts.get("retried", 0),
                "reward/set_aside": counts.get("set_aside", 0),
                **{f"reward/failed_{kind}": kinds[kind] for kind in FAILURE_KINDS},
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

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until every worker has loaded the reward (True) or ``timeout_s`` passed (False).

        Optional: ``score`` starts on whichever workers are ready. A reward that cannot load raises.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._check_open()
        with self._score_lock:
            while self._starting():
                if self._closing.is_set() or (deadline is not None and time.monotonic() >= deadline):
                    return False
                self._wait_and_collect(_Job([]))
        return True

    def pop_metrics(self) -> dict[str, float]:
        """Counters since the previous call (then reset), plus throughput (items/s) over that window."""
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
        """Current worker process ids, the spare and any set-aside workers included; for monitoring."""
        return [w.process.pid for w in self._workers]

    @property
    def zygote_pid(self) -> int | None:
        """The process the workers are forked from (rewards/zygote.py); for monitoring."""
        return self._zygote[0].process.pid if self._zygote else None

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

    def _run(self, job: _Job) -> list[RewardResult]:
        self._counts = collections.Counter()
        try:
            while job.queue or job.solo or any(w.state == "busy" for w in self._workers):
                if self._closing.is_set():
                    for i, r in enumerate(job.results):
                        if r is None:
                            job.results[i] = self._failure("pool closed")
                    for w in self._workers:
                        if w.state == "busy":  # no point waiting for close()'s grace period
                            kill_worker(w)
                    break
                self._dispatch(job)
                self._top_up()  # after dispatch: starting a process takes a few ms that a spare need not wait for
                self._wait_and_collect(job)
            if not self._closing.is_set():
                self._trim()
        except BaseException:
            # Abnormal exit (start-up failure, KeyboardInterrupt): drop in-flight work so no
            # stale result is read by the next batch.
            for w in list(self._workers):
                if w.state == "busy":
                    self._drop(w)
            raise
        return job.results  # type: ignore[return-value]

    def _dispatch(self, job: _Job) -> None:
        """Send chunks to idle workers, keeping at most ``_width()`` busy (set-aside ones aside)."""
        busy = sum(w.state == "busy" and not w.aside for w in self._workers)
        for w in list(self._workers):
            while w.state == "idle" and not w.aside and (job.queue or job.solo) and busy < self._width():
                solo = bool(job.solo)
                chunk = [job.solo.popleft()] if solo else self._take(job.queue)
                try:
                    w.conn.send(("score", [(idx, job.items[idx]) for idx in chunk]))
                except OSError:  # died while idle: not the items' fault, retry them elsewhere
                    (job.solo if solo else job.queue).extendleft(reversed(chunk))
                    logger.warning("reward worker pid=%s died while idle; replacing it", w.process.pid)
                    self._drop(w)
                    break
                except Exception as exc:  # an item cannot be pickled: fail it, re-queue the rest
                    self._drop_unsendable(job, chunk, solo, exc)
                    continue
                w.state, w.chunk, w.started = "busy", chunk, time.monotonic()
                w.deadline = w.started + self.timeout_s * (len(chunk) if w.batched else 1)
                busy += 1
                self._counts["round_trips"] += 1

    def _take(self, queue: collections.deque) -> list[int]:
        """The next chunk: the queue spread evenly over the workers, at most batch_size items."""
        n = max(1, min(self.batch_size, math.ceil(len(queue) / self._width()), len(queue)))
        return [queue.popleft() for _ in range(n)]

    def _drop_unsendable(self, job: _Job, chunk: list[int], solo: bool, exc: Exception) -> None:
        keep = []
        for idx in chunk:
            try:
                ForkingPickler.dumps(job.items[idx])
                keep.append(idx)
            except Exception as item_exc:
                job.results[idx] = self._failure(f"bad input: cannot send item: {type(item_exc).__name__}: {item_exc}")
        if len(keep) == len(chunk):  # no single item is to blame: do not loop forever
            for idx in chunk:
                job.results[idx] = self._failure(f"bad input: cannot send item: {type(exc).__name__}: {exc}")
            return
        (job.solo if solo else job.queue).extendleft(reversed(keep))

    def _wait_and_collect(self, job: _Job) -> None:
        active = [w for w in self._workers if w.state in ("starting", "busy")]
        zygote = self._current_zygote()
        if not active and zygote.ready and not zygote.pending:
            return
        wake = min([w.deadline for w in active] + [self._stall_at(w) for w in self._stall_candidates(job)]
                   + ([] if zygote.ready else [zygote.start_deadline]), default=math.inf)
        timeout = min(_MAX_WAIT_S, max(0.0, wake - time.monotonic()))
        waitables = [w.conn for w in active] + [w.process.sentinel for w in active] + zygote.waitables()
        ready = set(mp_connection.wait(waitables, timeout))
        self._pump_zygote()
        for w in active:
            if w in self._workers and (w.conn in ready or w.process.sentinel in ready):
                self._handle_event(w, job)
        now = time.monotonic()
        for w in list(self._workers):
            if w.state == "busy" and now >= w.deadline:
                logger.debug("reward chunk %s timed out; killing worker pid=%s", w.chunk, w.process.pid)
                self._lost(w, job, f"timeout after {self.timeout_s}s")
            elif w.state == "starting" and now >= w.deadline:
                self._start_failed(w, f"not ready after {self.start_timeout_s}s")
        if not zygote.ready and now >= zygote.start_deadline and zygote is self._current_zygote():
            self._zygote_failed(f"reward zygote not ready after {self.start_timeout_s}s")
        for w in self._stall_candidates(job):
            if now >= self._stall_at(w):
                self._set_aside(w, job)

    def _stall_candidates(self, job: _Job) -> list[WorkerHandle]:
        """Busy workers (not set aside) with work waiting behind them: setting one aside lets it through."""
        if sum(w.aside for w in self._workers) >= _MAX_ASIDE:
            return []
        waiting = bool(job.queue or job.solo)
        return [w for w in self._workers
                if w.state == "busy" and not w.aside and (waiting or (not w.batched and len(w.chunk) > 1))]

    def _stall_at(self, w: WorkerHandle) -> float:
        return w.started + self._stall_s * (len(w.chunk) if w.batched else 1)

    def _set_aside(self, w: WorkerHandle, job: _Job) -> None:
        """Let ``w`` finish (or time out on) its running item on its own; a spare takes its place
        on the next dispatch, and ``_top_up`` starts new spares.

        A streaming worker keeps only the running item: the rest of its chunk goes back to the
        queue and the worker is told to drop it ("cut"; it answers with what it did not start,
        which may include the item we thought was running: the pool's view of a worker lags a
        little). Once its item is answered and the cut acknowledged, it rejoins the pool as a
        spare, warm (a slow item was no fault of its).
        """
        w.aside = True
        if not w.batched and len(w.chunk) > 1:
            rest, w.chunk = w.chunk[1:], w.chunk[:1]
            job.queue.extendleft(reversed(rest))
            self._counts["retried"] += len(rest)
            try:
                w.conn.send(("cut",))
                w.cut = True
            except OSError:
                pass  # it died: its sentinel says so next
        self._counts["set_aside"] += 1
        logger.debug("reward item(s) %s still running after %.3fs: worker pid=%s set aside", w.chunk, time.monotonic() - w.started, w.process.pid)

    def _handle_event(self, w: WorkerHandle, job: _Job) -> None:
        while True:  # drain: a worker that died may have sent results first
            try:
                if not w.conn.poll():
                    if not mp_connection.wait([w.process.sentinel], 0):
                        return  # drained, still alive
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                break  # EOF: the worker is gone (or going); handled below
            except Exception as exc:  # the message itself is garbled: never trust this worker again
                self._lost(w, job, f"protocol error: {type(exc).__name__}: {exc}")
                return
            if not self._handle_message(w, msg, job):
                return  # the worker was dropped
        exitcode = kill_worker(w, wait_exit_s=1.0)  # it is dead already: this only reaps (and kills its group)
        if w.state == "starting":
            self._start_failed(w, f"exited during start-up (exit code {exitcode})")
        elif w.state == "busy":
            logger.debug("reward worker pid=%s died on item %s (exit code %s)", w.process.pid, w.chunk[0], exitcode)
            self._lost(w, job, f"worker died (exit code {exitcode})")
        else:
            logger.debug("reward worker pid=%s (%s) exited (exit code %s)", w.process.pid, w.state, exitcode)
            self._drop(w)

    def _handle_message(self, w: WorkerHandle, msg, job: _Job) -> bool:
        """Apply one message from worker ``w``; False if it had to be dropped."""
        kind = msg[0] if isinstance(msg, tuple) and msg else None
        if kind == "ready" and w.state == "starting":
            w.state, w.batched = "idle", bool(msg[2])
            self._start_failures = 0
        elif kind == "results" and w.state == "busy" and msg[1] and all(i in w.chunk or w.cut for i, _ in msg[1]):
            now = time.monotonic()
            self._note_item_time((now - w.started) / len(msg[1]))
            for idx, data in msg[1]:
                if idx not in w.chunk:
                    continue  # given to another worker when this one was set aside
                try:
                    job.results[idx] = pickle.loads(data)
                except Exception as exc:
                    job.results[idx] = self._failure(f"bad return type: result not unpicklable: {type(exc).__name__}: {exc}")
                w.chunk.remove(idx)
            if w.chunk or w.cut:  # streaming: the clock starts for the next item (if cut: not ours, but
                w.started, w.deadline = now, now + self.timeout_s  # it must end too)
            else:
                w.state, w.aside = "idle", False  # a set-aside worker rejoins, as a spare
        elif kind == "cut" and w.cut and len(msg) == 2 and isinstance(msg[1], list):
            # It may have stopped before the item we thought was running: that one goes back too.
            unstarted = [idx for idx in msg[1] if idx in w.chunk]
            for idx in unstarted:
                w.chunk.remove(idx)
            job.queue.extendleft(reversed(unstarted))
            self._counts["retried"] += len(unstarted)
            w.cut = False
            if not w.chunk:
                w.state, w.aside = "idle", False
        elif kind == "fallback" and w.state == "busy":  # the batched call raised; now item by item
            w.started = time.monotonic()
            w.deadline = w.started + self.timeout_s * len(w.chunk)
        else:  # cannot happen with a well-behaved worker; never trust it afterwards
            self._lost(w, job, f"protocol error: unexpected message {kind!r}")
            return False
        return True

    def _note_item_time(self, seconds: float) -> None:
        """Track how long items take, so that only an item far slower than usual gets set aside."""
        self._recent.append(seconds)
        if len(self._recent) >= _MIN_HISTORY:
            median = sorted(self._recent)[len(self._recent) // 2]
            self._stall_s = max(_STALL_FLOOR_S, _STALL_FACTOR * median)

    def _lost(self, w: WorkerHandle, job: _Job, reason: str) -> None:
        """``w`` hung, died or misbehaved: blame the item it was on, retry the others, replace it."""
        chunk, w.chunk = w.chunk, []
        if w.state != "busy" or not chunk:
            pass
        elif w.batched and len(chunk) > 1:  # cannot tell which item did it: try each alone
            job.solo.extend(chunk)
            self._counts["retried"] += len(chunk)
        else:  # streaming: the first unanswered item is the one that was running
            job.results[chunk[0]] = self._failure(reason)
            job.queue.extendleft(reversed(chunk[1:]))
            self._counts["retried"] += len(chunk) - 1
        self._drop(w)

    # ------------------------------------------------------------------ workers

    def _width(self) -> int:
        """How many workers may score at once: ``num_workers``, plus one per worker set aside in
        this call (up to ``_MAX_EXTRA``). With one worker, hangs would be found one after another
        (each costs a stall before it is set aside); a call that has met hangs looks for the rest
        of them in parallel. Set-aside workers are not counted: they are stalled."""
        return self.num_workers + min(_MAX_EXTRA, self._counts["set_aside"])

    def _top_up(self) -> None:
        """Keep ``_width()`` workers plus one warm spare that are not set aside (starting ones
        count, and so do those asked of the zygote), so that a set-aside worker is replaced at
        once, not after a process start."""
        zygote = self._current_zygote()
        missing = self._width() + 1 - sum(not w.aside for w in self._workers) - zygote.pending
        if missing > 0:
            try:
                zygote.request(missing)
            except OSError:  # it died: found and replaced on the next wait
                pass

    def _current_zygote(self) -> Zygote:
        if not self._zygote:
            self._zygote.append(Zygote(self._ctx, self._payload, self.failure_score, self.start_timeout_s,
                                       self._lifeline_r))
        return self._zygote[0]

    def _starting(self) -> bool:
        zygote = self._current_zygote()
        return not zygote.ready or zygote.pending > 0 or any(w.state == "starting" for w in self._workers)

    def _pump_zygote(self) -> None:
        """Take the zygote's news: new workers, exit codes; replace it if it is gone."""
        zygote = self._current_zygote()
        try:
            zygote.pump()
        except ZygoteInitError as exc:
            raise RewardError(f"reward worker failed to load the reward: {exc}") from None
        except ZygoteSpawnFailed as exc:
            raise RewardError(f"cannot start a reward worker: fork failed: {exc}") from None
        except ZygoteGone as exc:
            self._zygote_failed(str(exc))
        finally:
            while zygote.spawned:
                process, conn = zygote.spawned.popleft()
                self._workers.append(WorkerHandle(process, conn, time.monotonic() + self.start_timeout_s))

    def _zygote_failed(self, why: str) -> None:
        """The workers it made live on (their exit codes are unknown from now on); a new one makes more."""
        zygote = self._zygote.pop()
        zygote.close()
        if zygote.ready:
            logger.warning("%s; starting another", why)
            self._top_up()
            return
        self._start_failures += 1
        logger.warning("%s (%d consecutive start failures)", why, self._start_failures)
        if self._start_failures >= _MAX_START_FAILURES:
            self._start_failures = 0
            raise RewardError(f"reward workers keep failing to start; last: {why}")
        self._top_up()

    def _trim(self) -> None:
        """At the end of a call, let go of idle workers beyond ``_width()`` + 1, newest first: a
        calm call leaves one spare; one with hangs keeps its extra workers warm for the next
        (hangs tend to recur), and rejoined set-aside workers are the older, warm ones."""
        extra = sum(not w.aside for w in self._workers) - self._width() - 1
        for w in [w for w in reversed(self._workers) if w.state == "idle" and not w.aside][: max(0, extra)]:
            self._drop(w, failed=False)

    def _drop(self, w: WorkerHandle, failed: bool = True) -> None:
        """Kill ``w`` (a no-op if dead), forget it, and start a worker in its place if it held one."""
        kill_worker(w, reap=False)
        self._workers.remove(w)
        if failed:
            self._counts["replaced"] += 1
        self._top_up()

    def _start_failed(self, w: WorkerHandle, why: str) -> None:
        self._start_failures += 1
        logger.warning("reward worker %s (%d consecutive start failures)", why, self._start_failures)
        give_up = self._start_failures >= _MAX_START_FAILURES
        if give_up:
            self._start_failures = 0  # a later call starts counting afresh
        self._drop(w)
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


def _shut_down(workers: list[WorkerHandle], zygote: list[Zygote], lifeline: tuple) -> None:
    shutdown_workers(workers)
    for z in zygote:
        z.close()
    zygote.clear()
    for end in lifeline:  # any worker left (an old zygote's, one still being handed over) exits
        end.close()


def _with_throughput(counters: dict[str, float]) -> dict[str, float]:
    elapsed = counters["reward/score_time_s"]
    counters["reward/throughput_per_s"] = counters["reward/num_scored"] / elapsed if elapsed > 0 else 0.0
    return counters
