"""The asynchronous rollout schedule and its importance weights, without Ray."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from algorithms.off_policy import truncated_is_weights
from rlcore.rollout_pipeline import Rollout, RolloutPipeline, generation_version


class FakeTrainer:
    """Drives a pipeline the way rlcore/trainer.py does and records which weights made each batch."""

    def __init__(self, k: int, total: int, gen_s: float = 0.0):
        self.version, self.k, self.total, self.gen_s = 0, k, total, gen_s
        self.made_by: dict[int, int] = {}
        self.threads: set[str] = set()
        self.pipeline = RolloutPipeline(self.produce, k, total)

    def produce(self, step: int) -> Rollout:
        version = self.version
        time.sleep(self.gen_s)
        assert self.version == version, "weights were pushed while a batch was being generated"
        self.made_by[step] = version
        self.threads.add(threading.current_thread().name)
        return Rollout(step, version, [], {}, {})

    def run(self, start_step: int = 0, restored=(), stop_after: int | None = None) -> list[int]:
        self.version = start_step
        self.pipeline.start(start_step + 1, restored)
        trained_staleness = []
        for step in range(start_step + 1, (stop_after or self.total) + 1):
            rollout = self.pipeline.take(step)
            trained_staleness.append(step - 1 - rollout.version)
            time.sleep(self.gen_s / 2)  # the "update"
            self.pipeline.before_push(step)
            self.version = step
            if step == stop_after:  # where the trainer evaluates and saves, before the next submit
                break
            self.pipeline.after_push(step)
        return trained_staleness


@pytest.mark.parametrize("k", [0, 1, 2])
def test_each_batch_is_made_by_the_scheduled_version(k):
    trainer = FakeTrainer(k, total=6, gen_s=0.01)
    staleness = trainer.run()
    assert trainer.made_by == {s: generation_version(s, k) for s in range(1, 7)}
    assert max(staleness) <= k
    assert staleness == [min(k, s - 1) for s in range(1, 7)]
    if k == 0:
        assert trainer.threads == {threading.current_thread().name}  # the synchronous loop
    else:
        assert all(name.startswith("rollout") for name in trainer.threads)
    trainer.pipeline.close()


def test_nothing_is_generated_past_the_last_step():
    trainer = FakeTrainer(1, total=3)
    trainer.run()
    assert sorted(trainer.made_by) == [1, 2, 3]
    assert trainer.pipeline.ahead() == []
    trainer.pipeline.close()


def test_resume_from_the_batches_ahead_reproduces_the_schedule():
    straight = FakeTrainer(1, total=5)
    straight.run()
    first = FakeTrainer(1, total=5)
    first.run(stop_after=2)
    ahead = first.pipeline.ahead()  # what a checkpoint at step 2 stores
    assert [r.step for r in ahead] == [3] and ahead[0].version == 1
    first.pipeline.close()
    resumed = FakeTrainer(1, total=5)
    resumed.run(start_step=2, restored=ahead)
    assert {**first.made_by, **resumed.made_by} == straight.made_by


def test_sync_mode_uses_a_restored_batch_before_generating():
    trainer = FakeTrainer(0, total=2)
    trainer.pipeline.start(1, [Rollout(1, 7, [], {}, {})])
    assert trainer.pipeline.take(1).version == 7
    assert trainer.pipeline.take(2).version == 0 and trainer.made_by == {2: 0}


def test_truncated_importance_weights():
    learner = torch.tensor([[0.0, -1.0, -3.0, 5.0]])
    rollout = torch.tensor([[0.0, -2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights, metrics = truncated_is_weights(learner, rollout, mask, cap=2.0)
    e = torch.e
    expected = torch.tensor([[1.0, 2.0, e ** -2, 1.0]])  # e^1 capped at 2; the masked token stays 1
    assert torch.allclose(weights, expected)
    assert metrics["async/is_clipped_frac"] == pytest.approx(1 / 3)
    assert metrics["async/is_weight_max"] == pytest.approx(e)
    assert metrics["async/is_weight_mean"] == pytest.approx((1 + e + e ** -2) / 3)
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(learner, rollout, mask, cap=0.0)
