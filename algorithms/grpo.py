"""GRPO and Dr. GRPO algorithm specs.

GRPO (Shao et al., 2024, arXiv:2402.03300): group-normalised outcome
advantages, PPO-clip loss, no critic; a reference model only when a KL loss
is used (``kl_coef > 0``; ``kl_mode`` puts it in the loss or, as a per-token
penalty, in the rewards: :func:`algorithms.kl.kl_penalty`). Dr. GRPO (Liu et al., 2025, arXiv:2503.20783): same
but without std normalisation of advantages (pair it with the
``seq-mean-token-sum-norm`` aggregation to also remove the length bias).

Old log-probs are always requested: the clipped loss needs the behaviour
policy's log-probs, recomputed by the trainer rather than trusted from the
inference engine (whose numerics differ).
"""

from __future__ import annotations

from typing import Any

from .registry import AlgorithmSpec, register_algorithm


def _uses_kl(cfg: Any) -> bool:
    return float(getattr(cfg, "kl_coef", 0.0) or 0.0) > 0.0


@register_algorithm("grpo")
def grpo(cfg: Any) -> AlgorithmSpec:
    return AlgorithmSpec(
        name="grpo",
        advantage="grpo",
        policy_loss="clipped",
        needs_reference=_uses_kl(cfg),
        needs_critic=False,
        needs_old_logprobs=True,
        zero_advantage_has_zero_loss=True,
    )


@register_algorithm("drgrpo")
def drgrpo(cfg: Any) -> AlgorithmSpec:
    return AlgorithmSpec(
        name="drgrpo",
        advantage="drgrpo",
        policy_loss="clipped",
        needs_reference=_uses_kl(cfg),
        needs_critic=False,
        needs_old_logprobs=True,
        zero_advantage_has_zero_loss=True,
    )
