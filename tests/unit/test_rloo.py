"""RLOO against hand-computed values: each sample's baseline is the mean of its prompt's others."""
from __future__ import annotations

import torch

from algorithms import AdvantageInput, clipped_policy_loss, get_algorithm

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def test_leave_one_out_baseline_per_prompt():
    mask = torch.ones(6, 2, dtype=D)
    inp = AdvantageInput(rewards=t([1.0, 0.0, 1.0, 0.5, 0.25, 1.0]), group_index=torch.tensor([3, 3, 3, 7, 7, 9]),
                         correct=torch.tensor([True, False, True, False, False, True]), mask=mask,
                         token_penalty=torch.zeros_like(mask))
    algo = get_algorithm("rloo")
    out = algo.advantages(inp, algo.options())
    expected = [1 - (0 + 1) / 2, 0 - (1 + 1) / 2, 1 - (1 + 0) / 2,  # prompt 3
                0.5 - 0.25, 0.25 - 0.5,  # prompt 7
                0.0]  # prompt 9 has one sample: no baseline
    torch.testing.assert_close(out.advantages, t(expected))
    assert algo.loss is clipped_policy_loss and algo.zero_advantage_has_zero_loss


def test_the_kl_penalty_enters_as_the_sequence_sum():
    mask = torch.ones(2, 2, dtype=D)
    inp = AdvantageInput(rewards=t([1.0, 1.0]), group_index=torch.tensor([0, 0]), correct=torch.tensor([True, True]),
                         mask=mask, token_penalty=t([[0.1, 0.2], [0.0, 0.0]]))
    out = get_algorithm("rloo").advantages(inp, None)
    torch.testing.assert_close(out.advantages, t([-0.3, 0.3]))
