"""GSPO against hand-computed values: sequence ratio, sequence clipping, sequence mean."""
from __future__ import annotations

import math

import pytest
import torch

from algorithms import AdvantageInput, PolicyLossInput, get_algorithm
from algorithms.gspo import GSPOOptions

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def _loss_input(options):
    # seq 0: two tokens, log-ratios 0.1 and 0.3 -> s = exp(0.2); seq 1: one token, log-ratio -1e-4.
    old = t([[-1.0, -2.0], [-0.5, -3.0]])
    logp = (old + t([[0.1, 0.3], [-1e-4, 5.0]])).requires_grad_()  # 5.0 sits on a padded token
    mask = t([[1, 1], [1, 0]])
    adv = t([[1.0, 1.0], [-2.0, -2.0]]) * mask
    return PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, seq_normalizer=2.0,
                           options=options), logp


def test_sequence_ratio_is_clipped_per_sequence_and_averaged_over_sequences():
    gspo = get_algorithm("gspo")
    inp, logp = _loss_input(GSPOOptions())  # clip range [1 - 3e-4, 1 + 4e-4]
    out = gspo.loss(inp)
    s0, s1 = math.exp(0.2), math.exp(-1e-4)
    pg0 = max(-1.0 * s0, -1.0 * (1 + 4e-4))  # clipped: s0 is far above 1 + 4e-4
    pg1 = 2.0 * s1  # -A s with A = -2; s1 lies inside the clip range
    assert out.loss.item() == pytest.approx((pg0 + pg1) / 2, rel=1e-12)
    out.loss.backward()
    # seq 0 is clipped (no gradient); seq 1: d(-A s1)/dlogp = -A s1 / |y1|, over 2 sequences
    torch.testing.assert_close(logp.grad, t([[0.0, 0.0], [2.0 * s1 / 1 / 2, 0.0]]))
    assert out.metrics["clipfrac"] == pytest.approx(0.5)
    assert out.metrics["ratio_max"] == pytest.approx(s0)


def test_its_own_clip_range_applies():
    out = get_algorithm("gspo").loss(_loss_input(GSPOOptions(clip_low=0.2, clip_high=0.5))[0])
    s0, s1 = math.exp(0.2), math.exp(-1e-4)
    assert out.loss.item() == pytest.approx((-s0 + 2.0 * s1) / 2, rel=1e-12)  # nothing clipped
    assert out.metrics["clipfrac"] == 0.0


def test_advantages_are_grpos():
    gspo = get_algorithm("gspo")
    mask = torch.ones(4, 2)
    inp = AdvantageInput(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), group_index=torch.tensor([0, 0, 1, 1]),
                         correct=torch.tensor([True, False, False, True]), mask=mask,
                         token_penalty=torch.zeros_like(mask))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # (R - mean) / (unbiased std + eps) in a group of two
    torch.testing.assert_close(gspo.advantages(inp, GSPOOptions()).advantages, torch.tensor([a, -a, -a, a]))
    assert gspo.options is GSPOOptions and not gspo.advantage_weighting_exact


@pytest.mark.parametrize("field, value", [("clip_low", 1.0), ("clip_high", -0.1), ("eps", -1.0)])
def test_bad_options_are_refused(field, value):
    from algorithms import OptionError

    with pytest.raises(OptionError, match=field):
        GSPOOptions(**{field: value})
