"""Keeps every rollout engine serving the learner's current weights.

One object owns what the trainer would otherwise interleave with its step: the weight push
(collective or object store), the log-prob agreement check on every engine after it, and the
replacement of engines that died (a new actor, a new weight-update group, the weights pushed,
the check run), bounded by `trainer.max_actor_restarts`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import ray

from rlcore import topology
from rlcore.config import ExperimentConfig
from rlcore.groups import LearnerGroup, RolloutGroup, make_weight_sync


class LogprobMismatchError(RuntimeError):
    """Rollout and learner disagree on log-probs of the same tokens after a weight sync."""


class WorkerDiedError(RuntimeError):
    """A learner (or critic) rank died, or rollout engines died more often than allowed: the
    run stops; the message says how to resume from the last complete checkpoint."""


def logprob_mismatch_threshold(cfg: ExperimentConfig) -> float:
    """The configured threshold, or one that 16-bit rounding noise alone does not cross."""
    configured = cfg.trainer.logprob_mismatch_threshold
    if configured is not None:
        return configured
    return 0.05 if cfg.model.dtype == "float32" else 1.0


class EngineSync:
    """Push, check, replace. `version` is the policy version (updates applied) of the weights
    the engines hold; `restarts` counts replaced engines (saved with the trainer's state).

    `probe` gives sequences for the check when nothing was generated yet (a replacement, the
    first sync); `note` reports to the user; `resume_hint` says how to continue a stopped run.
    """

    def __init__(self, cfg: ExperimentConfig, learners: LearnerGroup, rollout: RolloutGroup,
                 probe: Callable[[], list[list[int]]], note: Callable[[str], None],
                 resume_hint: Callable[[], str]):
        self.cfg, self.learners, self.rollout = cfg, learners, rollout
        self.probe, self.note, self.resume_hint = probe, note, resume_hint
        self.version = 0
        self.restarts = 0
        self.last_timings: dict[str, float] = {}  # the last push's phases: time/sync_gather_s, ...
        rollout.on_death = self.replace
        self._open()

    def _open(self) -> None:
        on_gpus = self.cfg.learner.gpus_per_rank > 0 and self.cfg.rollout.gpus_per_worker > 0
        rc = self.cfg.rollout
        self.weight_sync = make_weight_sync(rc.weight_sync, self.learners, self.rollout, on_gpus,
                                            shared_memory=rc.weight_sync_shared_memory)

    def push(self, version: int, sequences: list[list[int]] | None = None) -> float | None:
        """Push the learner's weights as policy `version` to every engine, then return the
        largest learner-engine log-prob difference on `sequences` (None without any)."""
        dead = self.rollout.dead_workers()  # an engine that died since the last call is replaced first
        if dead:
            self.rollout.replace_dead(dead)
        try:
            self.last_timings = self.weight_sync.push(version)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
            dead = self.rollout.dead_workers()  # an engine died mid-push: replace it and push again
            if not dead:
                raise
            self.rollout.replace_dead(dead)
            self.last_timings = self.weight_sync.push(version)
        self.version = version
        return self.check(sequences, version) if sequences else None

    def check(self, sequences: list[list[int]], version: int) -> float:
        """Largest |learner - engine| log-prob over every engine; stop above the threshold."""
        ours = self.learners.sequence_logprobs(sequences)
        threshold = logprob_mismatch_threshold(self.cfg)
        diff = 0.0
        for engine, theirs in enumerate(self.rollout.sequence_logprobs(sequences)):
            worst = max(float(np.max(np.abs(np.array(a) - np.array(b)))) for a, b in zip(ours, theirs))
            if worst > threshold:
                raise LogprobMismatchError(
                    f"policy version {version}: rollout engine {engine} and the learner differ by {worst:.4g} "
                    f"in log-prob after weight sync (> trainer.logprob_mismatch_threshold={threshold} for "
                    f"model.dtype {self.cfg.model.dtype})"
                )
            diff = max(diff, worst)
        return diff

    def replace(self, indices: list[int]) -> None:
        """RolloutGroup's on_death: new engines in place of dead ones, the learner's weights
        pushed to them (a new weight-update group: the old one had the dead engine in it)."""
        limit = self.cfg.trainer.max_actor_restarts
        if self.restarts + len(indices) > limit:
            raise WorkerDiedError(f"rollout worker(s) {indices} died, after {self.restarts} restarts "
                                  f"(trainer.max_actor_restarts={limit}). {self.resume_hint()}")
        for i in indices:
            ray.kill(self.rollout.workers[i], no_restart=True)
            self.rollout.workers[i] = topology.create_rollout_worker(self.cfg)
        self.restarts += len(indices)
        self.note(f"rollout worker(s) {indices} died; replaced ({self.restarts} of "
                  f"trainer.max_actor_restarts={limit})")
        self._open()
        # With asynchronous rollout the learner may be a version or more ahead of the batch's
        # schedule: the rest of the batch comes from a fresher policy (the TIS weights use the
        # engine's own log-probs, so they stay right); synchronously it is the same version.
        self.weight_sync.push(self.version)
        self.check(self.probe(), self.version)
