"""REINFORCE++ (Hu, 2025, arXiv:2501.03262): critic-free PPO with per-token returns.

The outcome reward sits on the last policy token and the KL penalty on every token (set
``algorithm.kl_mode: reward`` with ``kl_coef > 0``; the paper's estimator is k1). Each token's
return is the discounted sum of the rewards after it, ``G_t = sum_{s >= t} gamma^(s-t) r_s``
(over policy tokens: tool output in between is skipped), and the advantage is that return
normalised over the whole batch's tokens, ``(G - mean) / std``: a global baseline, not a
per-prompt one. Trained with the PPO-clip loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .contract import AdvantageInput, AdvantageOutput, Algorithm, OptionError
from .policy_loss import clipped_policy_loss
from .ppo import gae_advantages, whiten
from .registry import register_algorithm


@dataclass(frozen=True)
class ReinforcePPOptions:
    gamma: float = 1.0  # discount per policy token

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise OptionError("gamma", f"must be in [0, 1], got {self.gamma}")


def reinforce_pp_advantages(inp: AdvantageInput, opts: ReinforcePPOptions) -> AdvantageOutput:
    token_rewards = inp.token_rewards()
    # GAE with zero values and lambda 1 is the discounted return over the policy tokens.
    returns, _ = gae_advantages(token_rewards, torch.zeros_like(token_rewards), inp.mask, opts.gamma, 1.0)
    return AdvantageOutput(whiten(returns, inp.mask))


REINFORCE_PP = register_algorithm(Algorithm(
    name="reinforce_pp", advantages=reinforce_pp_advantages, loss=clipped_policy_loss,
    options=ReinforcePPOptions, zero_advantage_has_zero_loss=True,
    description="per-token discounted returns (outcome + KL penalty), normalised over the batch, PPO clip",
))
