"""Plain data types shared by the registry, the reward functions and the pool.

Kept free of heavy imports so that spawned reward workers start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class RewardError(Exception):
    """Raised for reward configuration errors (unknown name, bad spec, worker start failure).

    Errors *inside* a reward function never raise out of the pool; they become a
    failed RewardResult instead, so one bad sample cannot stop a training step.
    """


@dataclass
class RewardInput:
    """One item to score: the model's completion for a prompt, plus the reference answer."""

    prompt: str
    completion: str
    ground_truth: str
    metadata: dict[str, Any] = field(default_factory=dict)
    num_tokens: int | None = None  # completion length in tokens (the trainer sets it)
    max_tokens: int | None = None  # the generation limit it was sampled under

    def reward_metadata(self) -> dict[str, Any]:
        """The metadata a reward function sees: ``metadata`` plus ``num_tokens``/``max_tokens`` when known.

        Length-aware rewards (overlong shaping, length penalties) only get text, so the token
        counts travel here; ``self.metadata`` itself is never modified.
        """
        if self.num_tokens is None and self.max_tokens is None:
            return self.metadata
        extra = {k: v for k, v in (("num_tokens", self.num_tokens), ("max_tokens", self.max_tokens)) if v is not None}
        return {**self.metadata, **extra}


@dataclass
class RewardResult:
    """Normalised outcome of scoring one item.

    ``failed`` marks results where the reward could not be computed (exception,
    timeout, crashed worker, bad or non-finite return); those carry the pool's
    failure score and a human-readable ``reason`` so they can be counted and logged
    separately from genuine zero rewards.
    """

    score: float
    correct: bool | None = None
    failed: bool = False
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failure(cls, reason: str, failure_score: float = 0.0) -> "RewardResult":
        """Build a failed result; the single place that defines what a failure looks like."""
        return cls(score=float(failure_score), correct=None, failed=True, reason=reason)
