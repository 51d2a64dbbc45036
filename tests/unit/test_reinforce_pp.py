"""REINFORCE++ against hand-computed values: per-token returns with the KL penalty inside,
normalised over the whole batch."""
from __future__ import annotations

import math

import pytest
import torch

from algorithms import AdvantageInput, OptionError, get_algorithm
from algorithms.reinforce_pp import ReinforcePPOptions

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def _input():
    mask = t([[1, 1, 1], [1, 1, 0]])
    return AdvantageInput(rewards=t([1.0, 0.0]), group_index=torch.tensor([0, 0]),
                          correct=torch.tensor([True, False]), mask=mask,
                          token_penalty=t([[0.1, 0.0, 0.2], [0.1, 0.1, 0.0]]))


def _whiten(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) + 1e-8)
    return [(v - mean) / std for v in values]


def test_returns_carry_the_outcome_and_every_later_penalty_then_are_normalised_over_the_batch():
    algo = get_algorithm("reinforce_pp")
    out = algo.advantages(_input(), ReinforcePPOptions())
    # token rewards: row 0 [-0.1, 0, 1 - 0.2], row 1 [-0.1, 0 - 0.1]; returns are suffix sums
    returns = [0.7, 0.8, 0.8, -0.2, -0.1]
    a = _whiten(returns)
    torch.testing.assert_close(out.advantages, t([[a[0], a[1], a[2]], [a[3], a[4], 0.0]]))
    assert out.advantages.shape == (2, 3)  # per token, not per sequence


def test_discount():
    out = get_algorithm("reinforce_pp").advantages(_input(), ReinforcePPOptions(gamma=0.5))
    returns = [-0.1 + 0.5 * (0.0 + 0.5 * 0.8), 0.0 + 0.5 * 0.8, 0.8, -0.1 + 0.5 * -0.1, -0.1]
    a = _whiten(returns)
    torch.testing.assert_close(out.advantages, t([[a[0], a[1], a[2]], [a[3], a[4], 0.0]]))


def test_options_are_checked():
    with pytest.raises(OptionError, match="gamma"):
        ReinforcePPOptions(gamma=1.5)
