"""An out-of-tree algorithm: REINFORCE with the batch's mean reward as its baseline.

Named in a config by path, with no edit to the framework:

    algorithm:
      name: examples/algorithms/batch_baseline.py:BATCH_BASELINE   # relative to the config file
      options: {scale_by_std: true}

The whole contract is algorithms/contract.py: an options dataclass (checked at config load), an
advantage function (driver) and a loss (learners), bundled in an Algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms import AdvantageInput, AdvantageOutput, Algorithm, OptionError, PolicyLossInput, PolicyLossOutput
from algorithms import kl_and_aggregate


@dataclass(frozen=True)
class BatchBaselineOptions:
    scale_by_std: bool = False  # divide by the batch's reward std
    eps: float = 1e-6

    def __post_init__(self):
        if not self.eps > 0:
            raise OptionError("eps", f"must be > 0, got {self.eps}")


def advantages(inp: AdvantageInput, opts: BatchBaselineOptions) -> AdvantageOutput:
    rewards = inp.sequence_rewards()
    adv = rewards - rewards.mean()
    if opts.scale_by_std and len(rewards) > 1:
        adv = adv / (rewards.std() + opts.eps)
    return AdvantageOutput(adv)


def loss(inp: PolicyLossInput) -> PolicyLossOutput:
    """``-A log p`` per token (the policy gradient itself; no ratio, no clipping)."""
    mask = inp.mask.to(inp.logp.dtype)
    per_token = torch.where(mask > 0, -inp.advantages.to(mask.dtype) * inp.logp, torch.zeros_like(mask))
    value, _ = kl_and_aggregate(per_token, mask, inp)
    pg = float((per_token.detach() * mask).sum() / mask.sum().clamp(min=1))
    return PolicyLossOutput(value, {"pg_loss": pg})


BATCH_BASELINE = Algorithm(
    name="batch_baseline", advantages=advantages, loss=loss, options=BatchBaselineOptions,
    needs_old_logprobs=False, zero_advantage_has_zero_loss=True,
    description="REINFORCE with the batch-mean baseline (an out-of-tree example)",
)
