"""Hanging rewards time out together (issue 13): a scoring call with any number of hung items
costs about one timeout more than a clean one, and every other item is still scored, in order."""

from __future__ import annotations

import os
import time

import pytest

from rewards import RewardInput, RewardPool

TIMEOUT_S = 1.5


def hang_or_score(prompt, completion, ground_truth, metadata):
    """Sleeps forever when metadata says so; otherwise the completion as a number (after ``sleep``)."""
    if metadata.get("hang"):
        time.sleep(10_000)
    time.sleep(metadata.get("sleep", 0.0))
    return {"score": float(completion), "correct": completion == ground_truth, "pid": os.getpid()}


def item(i: int, hang: bool = False, sleep: float = 0.0) -> RewardInput:
    return RewardInput(prompt="p", completion=str(i), ground_truth="0", metadata={"hang": hang, "sleep": sleep})


@pytest.fixture(scope="module")
def pool():
    # One worker, as in the default config: the case where hangs used to queue up behind each other.
    with RewardPool(hang_or_score, num_workers=1, timeout_s=TIMEOUT_S, failure_score=-1.0) as p:
        assert p.wait_ready(60.0)
        p.score([item(i) for i in range(8)])  # warm-up
        yield p


def _timed(pool, items):
    start = time.monotonic()
    results = pool.score(items)
    return results, time.monotonic() - start


@pytest.mark.parametrize("n, hang_every", [(200, 10), (40, 2)], ids=["10pct", "50pct"])
def test_hung_items_time_out_concurrently(pool, n, hang_every):
    hung = {i for i in range(n) if i % hang_every == hang_every // 2}
    _, clean_s = _timed(pool, [item(i) for i in range(n)])
    pool.pop_metrics()

    results, hang_s = _timed(pool, [item(i, hang=i in hung) for i in range(n)])

    assert hang_s <= clean_s + TIMEOUT_S + 1.0, f"{len(hung)} hung items: {hang_s:.2f} s vs clean {clean_s:.2f} s"
    assert hang_s >= TIMEOUT_S  # each hung item really waited its full timeout
    assert len(results) == n
    for i, r in enumerate(results):
        if i in hung:
            assert r.failed and r.score == -1.0 and r.reason == f"timeout after {TIMEOUT_S}s", (i, r)
        else:
            assert not r.failed and r.score == float(i) and r.correct == (i == 0), (i, r)
    metrics = pool.pop_metrics()
    assert metrics["reward/num_timeouts"] == len(hung) == metrics["reward/num_failed"]
    # Each stuck worker killed (and replaced); rarely one more: a worker set aside a moment
    # after it had finished its item and moved on to the next one, a hung one given elsewhere.
    assert len(hung) <= metrics["reward/workers_replaced"] <= len(hung) + 3
    assert metrics["reward/set_aside"] >= 1  # (not every hung item: one that nothing waits behind is not)
    # No hung process is left (no worker busy or set aside; spares may still be starting), and
    # the pool still works.
    assert [(w.state, w.aside) for w in pool._workers if w.state == "busy" or w.aside] == []
    assert [r.score for r in pool.score([item(i) for i in range(5)])] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_slow_item_does_not_hold_up_the_rest_and_keeps_its_score(pool):
    # 0.8 s for the slow item, then 40 x 15 ms = 0.6 s for the rest, if they waited behind it.
    results, elapsed = _timed(pool, [item(0, sleep=0.8)] + [item(i, sleep=0.015) for i in range(1, 41)])
    assert [r.score for r in results] == [float(i) for i in range(41)]
    assert not any(r.failed for r in results)
    assert elapsed < 0.8 + 0.4  # the others ran beside the slow item, not after it
