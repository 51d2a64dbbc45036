"""GRPO and Dr. GRPO.

GRPO (Shao et al., 2024, arXiv:2402.03300): group-normalised outcome advantages
(:func:`algorithms.advantages.grpo_advantages`) and the PPO-clip loss, no critic. Dr. GRPO
(Liu et al., 2025, arXiv:2503.20783): the same without the std division (pair it with the
``seq-mean-token-sum-norm`` aggregation to also remove the length bias).

A KL penalty in the reward (``algorithm.kl_mode: reward``) enters as the sequence's summed
penalty, subtracted from its score before the group statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

from .advantages import grpo_advantages
from .contract import AdvantageInput, AdvantageOutput, Algorithm, NoOptions, OptionError
from .policy_loss import clipped_policy_loss
from .registry import register_algorithm


@dataclass(frozen=True)
class GRPOOptions:
    eps: float = 1e-6  # added to the group std

    def __post_init__(self):
        if not self.eps >= 0:
            raise OptionError("eps", f"must be >= 0, got {self.eps}")


def grpo(inp: AdvantageInput, opts: GRPOOptions) -> AdvantageOutput:
    return AdvantageOutput(grpo_advantages(inp.sequence_rewards(), inp.group_index, eps=opts.eps))


def drgrpo(inp: AdvantageInput, opts: NoOptions) -> AdvantageOutput:
    return AdvantageOutput(grpo_advantages(inp.sequence_rewards(), inp.group_index, norm_by_std=False))


GRPO = register_algorithm(Algorithm(
    name="grpo", advantages=grpo, loss=clipped_policy_loss, options=GRPOOptions,
    zero_advantage_has_zero_loss=True,
    description="group-normalised outcome advantage, PPO clip",
))
DRGRPO = register_algorithm(Algorithm(
    name="drgrpo", advantages=drgrpo, loss=clipped_policy_loss,
    zero_advantage_has_zero_loss=True,
    description="group-centred outcome advantage (no std division), PPO clip",
))
