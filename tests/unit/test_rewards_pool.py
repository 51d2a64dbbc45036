"""RewardPool tests with real worker processes (no mocks): failure isolation, ordering, metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rewards import RewardError, RewardInput, RewardPool, RewardResult

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 1.0


def behaving_reward(prompt, completion, ground_truth, metadata):
    """Test reward whose behaviour is chosen per item by metadata['mode'].

    Module level so it is shipped to workers by value with cloudpickle, and also usable as
    a ``file.py:function`` spec.
    """
    mode = metadata.get("mode", "ok")
    if mode == "raise":
        raise ValueError("boom")
    if mode == "hang":
        time.sleep(100)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "exit":
        os._exit(1)
    if mode == "nan":
        return float("nan")
    if mode == "str":
        return "1.0"
    if mode == "unpicklable":
        return {"score": 1.0, "lock": __import__("threading").Lock()}
    time.sleep(metadata.get("sleep", 0.0))
    return {"score": float(completion), "correct": completion == ground_truth, "pid": os.getpid()}


def batched_behaving(prompts, completions, ground_truths, metadatas):
    """Batched twin of behaving_reward: one misbehaving item spoils the whole call."""
    return [behaving_reward(*args) for args in zip(prompts, completions, ground_truths, metadatas)]


batched_behaving.batched = True


def ok(i: int, sleep: float = 0.0) -> RewardInput:
    return RewardInput(prompt="p", completion=str(i), ground_truth="0", metadata={"sleep": sleep})


def bad(mode: str) -> RewardInput:
    return RewardInput(prompt="p", completion="0", ground_truth="0", metadata={"mode": mode})


def assert_ok(result: RewardResult, i: int) -> None:
    assert not result.failed, result.reason
    assert result.score == float(i)
    assert result.correct == (i == 0)


@pytest.fixture(scope="module")
def pool():
    with RewardPool(behaving_reward, num_workers=2, timeout_s=TIMEOUT_S) as p:
        assert p.wait_ready(60.0)  # so that both workers take part in the first test, even on a loaded machine
        yield p


def test_scores_in_input_order(pool):
    # Later items finish first, so ordering must come from indices, not completion order.
    items = [ok(i, sleep=0.02 * (6 - i)) for i in range(6)]
    results = pool.score(items)
    assert len(results) == 6
    for i, r in enumerate(results):
        assert_ok(r, i)
    assert len({r.info["pid"] for r in results}) == 2  # both workers took part
    assert pool.score([]) == []


def test_exception_is_a_failure_and_worker_survives(pool):
    pids = pool.worker_pids
    results = pool.score([ok(1), bad("raise"), ok(2)])
    assert results[1].failed and results[1].score == 0.0
    assert results[1].reason == "exception: ValueError: boom"
    assert_ok(results[0], 1)
    assert_ok(results[2], 2)
    assert pool.worker_pids == pids  # no replacement needed
    assert_ok(pool.score([ok(3)])[0], 3)


def test_hang_times_out_and_batch_continues(pool):
    pool.pop_metrics()
    start = time.monotonic()
    results = pool.score([bad("hang")] + [ok(i) for i in range(1, 5)])
    elapsed = time.monotonic() - start
    # Chunks [hang, 1, 2] and [3], [4]: the items after the hang in its chunk are re-sent, not failed.
    assert pool.pop_metrics()["reward/retried"] == 2
    assert results[0].failed and results[0].reason == f"timeout after {TIMEOUT_S}s"
    for i in range(1, 5):
        assert_ok(results[i], i)
    assert elapsed < TIMEOUT_S + 3.0  # killed at the deadline, not after the 100 s sleep
    assert_ok(pool.score([ok(5)])[0], 5)


def test_a_dead_zygote_costs_no_item_and_is_replaced():
    with RewardPool(behaving_reward, num_workers=2, timeout_s=TIMEOUT_S) as p:
        assert [r.score for r in p.score([ok(i) for i in range(4)])] == [0.0, 1.0, 2.0, 3.0]
        workers, zygote = set(p.worker_pids), p.zygote_pid
        os.kill(zygote, signal.SIGKILL)
        # the workers it forked go on scoring...
        assert [r.score for r in p.score([ok(i) for i in range(4)])] == [0.0, 1.0, 2.0, 3.0]
        assert set(p.worker_pids) == workers
        p.pop_metrics()
        # ...and the hangs need new workers, from a new zygote
        results = p.score([bad("hang"), ok(1), bad("hang"), ok(2)] + [ok(i) for i in range(3, 8)])
        assert results[0].reason == results[2].reason == f"timeout after {TIMEOUT_S}s"
        assert [results[1].score, results[3].score] + [r.score for r in results[4:]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        assert p.zygote_pid not in (None, zygote) and _alive(p.zygote_pid)
        assert p.pop_metrics()["reward/num_failed"] == 2


@pytest.mark.parametrize("mode, exit_code", [("kill", -9), ("exit", 1)])
def test_worker_death_is_a_failure_and_worker_is_replaced(pool, mode, exit_code):
    before = set(pool.worker_pids)
    results = pool.score([ok(1), bad(mode), ok(2)])
    assert results[1].failed and results[1].reason == f"worker died (exit code {exit_code})"
    assert_ok(results[0], 1)
    assert_ok(results[2], 2)
    assert set(pool.worker_pids) != before
    assert [r.score for r in pool.score([ok(i) for i in range(4)])] == [0.0, 1.0, 2.0, 3.0]


def test_bad_returns_are_failures(pool):
    results = pool.score([bad("nan"), bad("str"), bad("unpicklable"), ok(1)])
    assert results[0].reason == "non-finite score: nan"
    assert results[1].reason.startswith("bad return type: score is str")
    assert results[2].reason.startswith("bad return type: result not picklable")
    assert all(r.failed for r in results[:3])
    assert_ok(results[3], 1)


def test_mixed_batch_every_item_gets_one_result_and_metrics(pool):
    pool.pop_metrics()
    modes = ["raise", "hang", "kill", "exit", "nan"]
    items = []
    for i, mode in enumerate(modes):
        items += [ok(2 * i), bad(mode)]
    results = pool.score(items)
    assert len(results) == len(items)
    for i in range(len(modes)):
        assert_ok(results[2 * i], 2 * i)
        assert results[2 * i + 1].failed
    metrics = pool.pop_metrics()
    assert metrics["reward/num_scored"] == 10
    assert metrics["reward/num_failed"] == 5
    assert metrics["reward/num_timeouts"] == 1
    assert metrics["reward/workers_replaced"] == 3  # hang, kill, exit
    assert [metrics[f"reward/failed_{k}"] for k in ("exception", "timeout", "crash", "bad_return", "other")] == [1, 1, 2, 1, 0]
    assert metrics["reward/score_time_s"] > 0
    assert metrics["reward/throughput_per_s"] == pytest.approx(10 / metrics["reward/score_time_s"])
    assert pool.pop_metrics()["reward/num_scored"] == 0  # reset by pop
    assert pool.stats["reward/num_scored"] >= 10  # cumulative


def test_items_go_out_in_chunks(pool):
    pool.pop_metrics()
    results = pool.score([ok(i) for i in range(40)])
    assert [r.score for r in results] == [float(i) for i in range(40)]
    assert pool.pop_metrics()["reward/round_trips"] <= 8  # not one round trip per item


@pytest.fixture(scope="module")
def batched_pool():
    with RewardPool(batched_behaving, num_workers=2, timeout_s=TIMEOUT_S, batch_size=3) as p:
        assert p.wait_ready(60.0)
        yield p


@pytest.mark.parametrize("mode, reason, kind, replaced", [
    ("raise", "exception: ValueError: boom", "exception", 0),  # the worker retries the chunk item by item
    ("nan", "non-finite score: nan", "bad_return", 0),
    ("hang", f"timeout after {TIMEOUT_S}s", "timeout", 2),  # the chunk times out, then the item alone
    ("kill", "worker died (exit code -9)", "crash", 2),
])
def test_batched_failure_costs_only_that_item(batched_pool, mode, reason, kind, replaced):
    batched_pool.pop_metrics()
    results = batched_pool.score([ok(1), ok(2), bad(mode), ok(3), ok(4), ok(5)])
    assert results[2].failed and results[2].reason == reason and results[2].score == 0.0
    for i, r in zip(range(1, 6), results[:2] + results[3:]):
        assert_ok(r, i)
    metrics = batched_pool.pop_metrics()
    assert metrics["reward/num_failed"] == 1 and metrics[f"reward/failed_{kind}"] == 1
    assert metrics["reward/workers_replaced"] == replaced
    assert metrics["reward/retried"] == (3 if replaced else 0)  # the suspect chunk, one item at a time


def test_submit_does_not_block_the_caller(pool):
    start = time.monotonic()
    future = pool.submit([ok(1, sleep=0.3), ok(2)])
    assert time.monotonic() - start < 0.2
    results = future.result(timeout=30)
    assert_ok(results[0], 1)
    assert_ok(results[1], 2)


def test_rejects_non_inputs(pool):
    with pytest.raises(TypeError):
        pool.score([("p", "c", "g", {})])


def test_file_spec_and_failure_score():
    spec = f"{os.path.abspath(__file__)}:behaving_reward"
    with RewardPool(spec, num_workers=1, timeout_s=TIMEOUT_S, failure_score=-1.0) as p:
        results = p.score([ok(0), bad("raise")])
    assert_ok(results[0], 0)
    assert results[1].failed and results[1].score == -1.0


def test_builtin_name_spec():
    with RewardPool("math_answer", num_workers=1) as p:
        results = p.score(
            [
                RewardInput("q", r"so \boxed{\frac{1}{2}}", "0.5"),
                RewardInput("q", r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
                RewardInput("q", "no box", "1"),
            ]
        )
    assert [r.score for r in results] == [1.0, 1.0, 0.0]
    assert results[2].info == {"extracted": None} and results[2].correct is False


def test_a_failing_fork_is_an_error_not_a_loop(tmp_path):
    # The reward's module is imported in the zygote, so it can take fork away there (as a
    # process limit would): asking for workers must then raise, not retry forever.
    path = tmp_path / "no_fork_reward.py"
    path.write_text(textwrap.dedent(
        """
        import os

        def _no_fork():
            raise BlockingIOError(11, "Resource temporarily unavailable")

        os.fork = _no_fork

        def reward(prompt, completion, ground_truth, metadata):
            return 1.0
        """
    ))
    real_fork = os.fork
    try:
        with RewardPool(f"{path}:reward", num_workers=1, timeout_s=TIMEOUT_S) as p:  # imports it here too
            with pytest.raises(RewardError, match="fork failed: BlockingIOError"):
                p.score([ok(0)])
    finally:
        os.fork = real_fork


def test_bad_spec_fails_at_construction():
    with pytest.raises(RewardError, match="unknown reward"):
        RewardPool("no_such_reward")


def test_reward_that_cannot_load_in_worker_raises(tmp_path):
    path = tmp_path / "parent_only_reward.py"
    path.write_text(
        textwrap.dedent(
            """
            import multiprocessing
            if multiprocessing.parent_process() is not None:
                raise RuntimeError("only importable in the parent")

            def fn(prompt, completion, ground_truth, metadata):
                return 1.0
            """
        )
    )
    with RewardPool(f"{path}:fn", num_workers=1) as p:
        with pytest.raises(RewardError, match="only importable in the parent"):
            p.score([ok(0)])


def test_close_kills_workers_and_rejects_work():
    p = RewardPool(behaving_reward, num_workers=2, timeout_s=TIMEOUT_S)
    assert_ok(p.score([ok(0)])[0], 0)
    pids = p.worker_pids
    p.close()
    p.close()  # idempotent
    for pid in pids:
        assert not _alive(pid)
    with pytest.raises(RewardError, match="closed"):
        p.score([ok(0)])
    with pytest.raises(RewardError, match="closed"):
        p.submit([ok(0)])


def test_close_during_batch_fails_remaining_items():
    p = RewardPool(behaving_reward, num_workers=1, timeout_s=30.0)
    future = p.submit([bad("hang"), bad("hang")])  # neither can finish before close() (an ok item could now)
    time.sleep(0.6)
    start = time.monotonic()
    p.close()
    assert time.monotonic() - start < 2.0
    results = future.result(timeout=10)
    assert [r.reason for r in results] == ["pool closed", "pool closed"]


def test_workers_exit_when_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {REPO_ROOT!r})
            sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
            from rewards import RewardInput, RewardPool
            from test_rewards_pool import behaving_reward

            if __name__ == "__main__":
                pool = RewardPool(behaving_reward, num_workers=2, timeout_s=60.0)
                pool.score([RewardInput("p", "0", "0")])
                pool.submit([RewardInput("p", "0", "0", {{"mode": "hang"}})])  # one worker busy
                time.sleep(0.3)
                print(*pool.worker_pids, pool.zygote_pid, flush=True)
                time.sleep(60)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 4 and all(_alive(pid) for pid in pids)  # two workers, the spare, the zygote
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    """Running (not exited / zombie). Reads /proc so it works for non-children too."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
