"""Faults on the real stack: an engine killed with SIGKILL is replaced and costs one retry, not
the run; a dead learner rank stops the run with a message saying how to resume, and the resume
reaches the last step."""
from __future__ import annotations

import os
import signal

import pytest

from rlcore.tracking import read_metrics
from rlcore.engine_sync import WorkerDiedError
from rlcore.trainer import Trainer

pytestmark = pytest.mark.integration

COMPARED = ("reward/mean", "reward/accuracy", "response/", "train/loss", "train/grad_norm", "samples/")


def kill_actor(actor) -> None:
    """kill -9 the actor's process, as the OOM killer or a lost node would."""
    import ray

    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)


class EngineKiller(Trainer):
    """Kills the engine just before step `during_generation` generates, and again after step
    `before_push`'s update, before its weights are pushed."""

    during_generation, before_push = 2, 3

    def _rollout(self, step):
        if step == self.during_generation:
            kill_actor(self.rollout.workers[0])
        return super()._rollout(step)

    def _sync_weights(self, sequences):
        if self.step == self.before_push:
            kill_actor(self.rollout.workers[0])
        return super()._sync_weights(sequences)


def _steps(run_dir) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for row in read_metrics(run_dir):
        if "reward/mean" in row:
            rows[row["step"]] = row
    return rows


def test_killed_engine_is_replaced_and_the_run_learns_the_same(ray_cluster, make_config):
    common = dict(learner__num_ranks=1, trainer__total_steps=4, eval__every=0)
    clean = make_config(name="clean", **common)
    Trainer(clean).run()
    faulty = make_config(name="faulty", **common)
    summary = EngineKiller(faulty).run()

    assert summary["steps"] == 4
    a, b = _steps(clean.run_dir), _steps(faulty.run_dir)
    assert sorted(b) == [1, 2, 3, 4]
    assert [b[s]["fault/rollout_restarts"] for s in (1, 2, 3, 4)] == [0, 1, 2, 2]
    assert all(a[s]["fault/rollout_restarts"] == 0 for s in a)
    # Per-request seeds and the same weights: the retried generation is the one that was lost.
    for step in a:
        for key, value in a[step].items():
            if key.startswith(COMPARED):
                assert b[step][key] == value, f"step {step}: {key} {b[step][key]} != {value}"
        assert b[step]["sync/logprob_diff_max"] < 1e-3  # the new engine got the current weights


def test_killed_engine_during_asynchronous_rollout_is_replaced(ray_cluster, make_config):
    cfg = make_config(name="async_fault", learner__num_ranks=1, trainer__total_steps=4, eval__every=0,
                      rollout__max_staleness=1)
    killer = type("AsyncKiller", (EngineKiller,), {"during_generation": 3, "before_push": -1})
    summary = killer(cfg).run()
    assert summary["steps"] == 4
    rows = _steps(cfg.run_dir)
    assert rows[4]["fault/rollout_restarts"] == 1
    assert all(r["async/staleness"] <= 1 for r in rows.values())


def test_dead_learner_stops_with_a_resume_hint_and_resume_finishes(ray_cluster, make_config):
    common = dict(trainer__checkpoint_every=2, eval__every=0)

    class LearnerKiller(Trainer):
        def _train_step(self):
            if self.step == 3:
                kill_actor(self.learners.workers[1])
            return super()._train_step()

    cfg = make_config(name="learner_fault", trainer__total_steps=4, **common)
    with pytest.raises(WorkerDiedError, match=r"step_2.*rlcore train --resume"):
        LearnerKiller(cfg).run()
    assert [r["step"] for r in read_metrics(cfg.run_dir) if "reward/mean" in r] == [1, 2]

    resumed = make_config(name="learner_fault", trainer__total_steps=4, resume="latest", **common)
    assert Trainer(resumed).run()["steps"] == 4
    assert sorted(_steps(cfg.run_dir)) == [1, 2, 3, 4]  # no step logged twice
