"""RLOO: REINFORCE with a leave-one-out baseline (Kool et al., 2019, "Buy 4 REINFORCE Samples,
Get a Baseline for Free!"; Ahmadian et al., 2024, arXiv:2402.14740).

Each sample's baseline is the mean reward of the other samples of its prompt:
``A_i = R_i - (sum_g R - R_i) / (n - 1) = n / (n - 1) * (R_i - mean_g)``, an unbiased baseline
(it does not depend on sample i). No std division. A prompt with a single sample has no
baseline and gets 0. Trained with the PPO-clip loss: with one optimiser pass per batch its
ratio is 1 and the gradient is REINFORCE's ``-A grad log p``.
"""
from __future__ import annotations

import torch

from .contract import AdvantageInput, AdvantageOutput, Algorithm, NoOptions
from .policy_loss import clipped_policy_loss
from .registry import register_algorithm


def rloo_advantages(inp: AdvantageInput, opts: NoOptions) -> AdvantageOutput:
    rewards = inp.sequence_rewards()
    _, groups = torch.unique(inp.group_index, return_inverse=True)
    size = rewards.new_zeros(int(groups.max()) + 1 if groups.numel() else 0).index_add(0, groups, torch.ones_like(rewards))
    total = torch.zeros_like(size).index_add(0, groups, rewards)
    n = size[groups]
    others = (total[groups] - rewards) / (n - 1).clamp(min=1)
    return AdvantageOutput(torch.where(n > 1, rewards - others, torch.zeros_like(rewards)))


RLOO = register_algorithm(Algorithm(
    name="rloo", advantages=rloo_advantages, loss=clipped_policy_loss, zero_advantage_has_zero_loss=True,
    description="leave-one-out baseline (mean of the prompt's other samples), PPO clip",
))
