"""EngineSync without Ray actors: stand-in groups record what was pushed, checked and replaced.

The real path (vLLM engines killed mid-run and replaced) is tests/integration/test_faults.py.
"""
from __future__ import annotations

import pytest
import ray

from rlcore import engine_sync
from rlcore.config import load_config
from rlcore.engine_sync import EngineSync, LogprobMismatchError, WorkerDiedError
from rlcore.groups import RolloutGroup


class Learners:
    def __init__(self, logprobs):
        self.logprobs = logprobs

    def sequence_logprobs(self, sequences):
        return [self.logprobs for _ in sequences]


class Engines(RolloutGroup):
    """Engine i returns `offsets[i]` + the learner's log-probs; `dead` are the workers that do
    not answer; `update_weights` fails while `fail_pushes` > 0."""

    def __init__(self, n, learner_logprobs):
        super().__init__([f"engine{i}" for i in range(n)])
        self.offsets = [0.0] * n
        self.dead: set[int] = set()
        self.pushed: list[int] = []
        self.fail_pushes = 0
        self.learner_logprobs = learner_logprobs

    def dead_workers(self, timeout_s=30.0):
        return sorted(self.dead)

    def update_weights(self, weights_ref, version):
        if self.fail_pushes:
            self.fail_pushes -= 1
            raise ray.exceptions.RayActorError()
        self.pushed.append(version)
        return 0.0

    def sequence_logprobs(self, sequences):
        return [[[x + off for x in self.learner_logprobs] for _ in sequences] for off in self.offsets]


@pytest.fixture
def setup(monkeypatch):
    cfg = load_config(None, ["model.path=unused", "rollout.weight_sync=object_store", "trainer.max_actor_restarts=2",
                             "model.dtype=float32"])
    learners = Learners([-1.0, -2.0])
    learners.gather_weights = lambda: "weights"
    engines = Engines(2, learners.logprobs)
    created, killed, notes = [], [], []

    def create(c):
        created.append(c)
        return f"new{len(created)}"

    monkeypatch.setattr(engine_sync.topology, "create_rollout_worker", create)
    monkeypatch.setattr(engine_sync.ray, "kill", lambda actor, no_restart: killed.append(actor))
    sync = EngineSync(cfg, learners, engines, probe=lambda: [[1, 2, 3]], note=notes.append,
                      resume_hint=lambda: "resume with X")

    def revive(indices):  # the dead answer again once replaced
        engines.dead -= set(indices)
    original = sync.replace

    def replace(indices):
        original(indices)
        revive(indices)
    engines.on_death = replace
    return sync, engines, created, killed, notes


def test_push_records_the_version_and_the_largest_difference_over_every_engine(setup):
    sync, engines, *_ = setup
    engines.offsets = [0.0, 0.01]
    assert sync.push(5, [[1, 2]]) == pytest.approx(0.01)
    assert sync.version == 5 and engines.pushed == [5]
    assert "time/sync_total_s" in sync.last_timings
    assert sync.push(6) is None  # nothing to check against


def test_a_disagreeing_second_engine_stops_the_run(setup):
    sync, engines, *_ = setup
    engines.offsets = [0.0, 0.5]  # above the float32 default of 0.05
    with pytest.raises(LogprobMismatchError, match="rollout engine 1 .* differ by 0.5"):
        sync.push(3, [[1, 2]])


def test_a_dead_engine_is_replaced_before_the_push_and_gets_the_current_weights(setup):
    sync, engines, created, killed, notes = setup
    sync.push(1, [[1]])
    engines.dead = {1}
    sync.push(2, [[1]])
    assert killed == ["engine1"] and engines.workers == ["engine0", "new1"]
    assert sync.restarts == 1 and "replaced (1 of trainer.max_actor_restarts=2)" in notes[0]
    # the replacement got version 1 (what the others hold), then everyone got version 2
    assert engines.pushed == [1, 1, 2]


def test_an_engine_dying_during_the_push_is_replaced_and_the_push_repeated(setup):
    sync, engines, created, killed, _ = setup
    engines.fail_pushes = 1
    original = engines.update_weights

    def dies_on_push(ref, version):
        if engines.fail_pushes:
            engines.dead = {0}
        return original(ref, version)
    engines.update_weights = dies_on_push
    sync.push(4, [[1]])
    assert killed == ["engine0"] and sync.restarts == 1 and engines.pushed[-1] == 4


def test_a_push_failure_with_every_engine_alive_is_not_swallowed(setup):
    sync, engines, *_ = setup
    engines.fail_pushes = 1
    with pytest.raises(ray.exceptions.RayActorError):
        sync.push(1)


def test_restarts_beyond_the_limit_stop_with_the_resume_hint(setup):
    sync, engines, created, *_ = setup
    sync.restarts = 1
    with pytest.raises(WorkerDiedError, match=r"\[0, 1\] died, after 1 restarts .*max_actor_restarts=2.*resume with X"):
        sync.replace([0, 1])
    assert created == []  # nothing started once the limit is exceeded
