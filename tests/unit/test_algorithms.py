"""Unit tests for the pure-tensor ``algorithms`` package."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import algorithms
from algorithms import (
    AGG_MODES,
    AdvantageInput,
    Algorithm,
    PolicyLossInput,
    PolicyLossOutput,
    aggregate,
    clipped_policy_loss,
    get_algorithm,
    grpo_advantages,
    kl_estimate,
    register_algorithm,
)
from algorithms import registry as reg
from algorithms.aggregation import PROMPT_MODES, prompt_token_weights
from algorithms.contract import spread


def drgrpo_advantages(rewards, groups):
    return grpo_advantages(rewards, groups, norm_by_std=False)

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------- advantages


def test_grpo_hand_computed():
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    adv = grpo_advantages(rewards, groups, eps=0.0)
    # group 0: mean .5, unbiased std sqrt(1/3) -> +-0.5*sqrt(3)
    a0 = 0.5 * math.sqrt(3)
    # group 2: mean .5, unbiased std sqrt(.5) -> +-0.5/sqrt(.5)
    a2 = 0.5 / math.sqrt(0.5)
    expected = t([a0, -a0, -a0, a0, 0, 0, 0, 0, -a2, a2])
    torch.testing.assert_close(adv, expected)


def test_grpo_eps_is_added_to_std():
    adv = grpo_advantages(t([0, 1]), torch.tensor([0, 0]), eps=0.1)
    std = math.sqrt(0.5)
    torch.testing.assert_close(adv, t([-0.5 / (std + 0.1), 0.5 / (std + 0.1)]))


def test_grpo_non_contiguous_unequal_groups():
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    base = grpo_advantages(rewards, groups)
    perm = torch.tensor([9, 2, 5, 0, 7, 3, 8, 1, 6, 4])
    # arbitrary (non-consecutive, unsorted) ids
    ids = torch.tensor([42, -3, 1000])[groups]
    adv = grpo_advantages(rewards[perm], ids[perm])
    torch.testing.assert_close(adv, base[perm])


def test_grpo_constant_and_singleton_groups_are_zero():
    # 0.1 is not exactly representable: mean != 0.1 in float32, must still be exactly 0
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.7, 3.0], dtype=torch.float32)
    groups = torch.tensor([0, 0, 0, 1, 2])
    adv = grpo_advantages(rewards, groups)
    assert adv.dtype == torch.float32
    assert torch.equal(adv, torch.zeros(5))
    assert torch.equal(drgrpo_advantages(rewards, groups), torch.zeros(5))


def test_grpo_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    B = 500
    groups = torch.randint(0, 60, (B,), generator=g)
    rewards = torch.randn(B, generator=g, dtype=D)
    adv = grpo_advantages(rewards, groups)
    ref = torch.zeros(B, dtype=D)
    for gid in groups.unique():
        idx = (groups == gid).nonzero().squeeze(-1)
        r = rewards[idx]
        if len(r) > 1:
            ref[idx] = (r - r.mean()) / (torch.std(r) + 1e-6)  # torch.std default: unbiased
    torch.testing.assert_close(adv, ref)


def test_grpo_int_rewards_and_empty():
    adv = grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert adv.dtype.is_floating_point
    assert grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0


def test_grpo_rejects_bad_inputs():
    with pytest.raises(ValueError):
        grpo_advantages(t([1, 2]), torch.tensor([0]))
    with pytest.raises(TypeError):
        grpo_advantages(t([1, 2]), t([0, 0]))


def test_drgrpo_hand_computed():
    rewards = t([1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    expected = t([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.5, 0.5, 0])
    torch.testing.assert_close(drgrpo_advantages(rewards, groups), expected)
    torch.testing.assert_close(grpo_advantages(rewards, groups, norm_by_std=False), expected)
    rewards2 = t([3, 0, 0])
    torch.testing.assert_close(drgrpo_advantages(rewards2, torch.tensor([0, 0, 0])), t([2, -1, -1]))


def test_spread_puts_sequence_values_on_the_policy_tokens():
    adv = t([2.0, -1.0])
    mask = t([[0, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(spread(adv, mask), t([[0, 2, 2], [-1, -1, 0]]))
    with pytest.raises(ValueError):  # a mask for other rows
        spread(adv, mask[:1])


# --------------------------------------------------------------------------- KL


def test_kl_estimators_hand_computed():
    logp = t([math.log(0.5)])
    ref = t([math.log(0.25)])
    ln2 = math.log(2)
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), t([ln2]))
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), t([0.5 * ln2**2]))
    # r = ref/p = 0.5, log r = -ln2: k3 = r - 1 - log r = -0.5 + ln2
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), t([ln2 - 0.5]))
    # k1 can be negative; k2/k3 cannot
    torch.testing.assert_close(kl_estimate(ref, logp, "k1"), t([-ln2]))
    # swapped: r = 2, log r = ln2 -> k3 = 2 - 1 - ln2
    torch.testing.assert_close(kl_estimate(ref, logp, "k3"), t([1.0 - ln2]))


def test_kl_k3_clamps():
    logp = t([0.0, 0.0, 0.0])
    ref = t([-30.0, 30.0, 0.0])
    out = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(out, t([10.0, 10.0, 0.0]))
    assert torch.isfinite(out).all()
    # gradient finite even at the clamp
    lp = logp.clone().requires_grad_()
    kl_estimate(lp, t([-1e4, 1e4, 0.0]), "k3").sum().backward()
    assert torch.isfinite(lp.grad).all()


def test_kl_unknown():
    with pytest.raises(ValueError, match="k3"):
        kl_estimate(t([0.0]), t([0.0]), "k4")


# --------------------------------------------------------------------------- aggregation

VALS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 7 / 3),
        ("seq-mean-token-mean", (1.5 + 4.0) / 2),  # empty row not counted
        ("seq-mean-token-sum", (3.0 + 4.0) / 3),
        ("seq-mean-token-sum-norm", 7 / 3 / 3),
    ],
)
def test_aggregate_hand_computed(mode, expected):
    out = aggregate(t(VALS), t(MASK), mode)
    assert out.dim() == 0
    torch.testing.assert_close(out, t(expected))


def test_aggregate_explicit_normalizers():
    v, m = t(VALS), t(MASK)
    torch.testing.assert_close(aggregate(v, m, "token-mean", token_normalizer=14), t(0.5))
    torch.testing.assert_close(aggregate(v, m, "seq-mean-token-mean", seq_normalizer=11), t(0.5))
    torch.testing.assert_close(aggregate(v, m, "seq-mean-token-sum", seq_normalizer=14), t(0.5))
    torch.testing.assert_close(
        aggregate(v, m, "seq-mean-token-sum-norm", seq_normalizer=2, max_tokens=7), t(0.5)
    )
    torch.testing.assert_close(
        aggregate(v, m, "token-mean", token_normalizer=torch.tensor(14.0)), t(0.5)
    )


def test_aggregate_bool_mask():
    torch.testing.assert_close(aggregate(t(VALS), t(MASK).bool(), "token-mean"), t(7 / 3))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_zero_denominator_is_zero_with_grad(mode):
    v = t(VALS).requires_grad_()
    out = aggregate(v, torch.zeros(3, 3, dtype=D), mode, token_normalizer=None,
                    **_weights(mode, torch.zeros(3, 3, dtype=D)))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(v.grad, torch.zeros(3, 3, dtype=D))
    v2 = t(VALS).requires_grad_()
    out2 = aggregate(v2, t(MASK), mode, token_normalizer=0, seq_normalizer=0, **_weights(mode, t(MASK) * 0))
    assert out2.item() == 0.0 and out2.requires_grad
    out2.backward()
    assert torch.isfinite(v2.grad).all()


def test_aggregate_errors():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(t(VALS), t(MASK), "bogus")
    with pytest.raises(ValueError):
        aggregate(t(VALS), t(MASK)[:2], "token-mean")


def _weights(mode: str, mask: torch.Tensor) -> dict:
    """The prompt-mean-* modes' token weights (rows in prompts of two), computed over the full
    batch as the driver does; {} for the other modes."""
    if mode not in PROMPT_MODES:
        return {}
    return {"token_weight": prompt_token_weights(mask, torch.arange(mask.shape[0]) // 2, mode)}


def _sliced(kwargs: dict, sl) -> dict:
    return {k: v[sl] for k, v in kwargs.items()}


def _norms_for(mode: str, mask: torch.Tensor) -> dict:
    """Global (full-batch) normalisers a learner would pass to each micro-batch."""
    if mode == "seq-mean-token-mean":
        seqs = (mask.sum(-1) > 0).sum()  # sequences with at least one counted token
    else:
        seqs = mask.shape[0]
    return dict(token_normalizer=mask.sum(), seq_normalizer=seqs, max_tokens=mask.shape[1])


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batch_split_equals_full_batch(mode):
    g = torch.Generator().manual_seed(1)
    B, T = 7, 6
    vals = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) > 0.4).to(D)
    mask[2] = 0  # a sequence with no counted tokens
    mask[5, 3:] = 0  # trailing padding

    weights = _weights(mode, mask)
    full_in = vals.clone().requires_grad_()
    full = aggregate(full_in, mask, mode, **weights)
    full.backward()

    norms = _norms_for(mode, mask)
    micro_in = vals.clone().requires_grad_()
    total = 0.0
    for sl in (slice(0, 3), slice(3, B)):
        total = total + aggregate(micro_in[sl], mask[sl], mode, **norms, **_sliced(weights, sl))
    total.backward()

    torch.testing.assert_close(total, full)
    torch.testing.assert_close(micro_in.grad, full_in.grad)


def test_micro_batch_split_with_different_padding_lengths():
    """seq-mean-token-sum-norm needs a shared max_tokens when micro-batches are
    padded to different lengths."""
    g = torch.Generator().manual_seed(2)
    B, T = 4, 8
    vals = torch.randn(B, T, generator=g, dtype=D)
    mask = torch.ones(B, T, dtype=D)
    mask[2:, 5:] = 0
    full = aggregate(vals, mask, "seq-mean-token-sum-norm")
    parts = aggregate(vals[:2], mask[:2], "seq-mean-token-sum-norm", seq_normalizer=B, max_tokens=T)
    parts = parts + aggregate(
        vals[2:, :5], mask[2:, :5], "seq-mean-token-sum-norm", seq_normalizer=B, max_tokens=T
    )
    torch.testing.assert_close(parts, full)


# --------------------------------------------------------------------------- policy loss


def _single_token_batch(ratios, advs):
    ratios, advs = t(ratios), t(advs)
    old = torch.zeros(len(ratios), 1, dtype=D)
    logp = torch.log(ratios).unsqueeze(-1).requires_grad_()
    return logp, old, advs.unsqueeze(-1), torch.ones_like(old)


def test_clipped_loss_by_hand():
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 0.9]
    advs = [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    # per-token pg = max(-A r, -A clip(r, .8, 1.2))
    expected_pg = [-1.1, -1.2, -0.5, 0.8, 1.5, 0.9]
    clipped = [0, 1, 0, 1, 0, 0]
    logp, old, adv, mask = _single_token_batch(ratios, advs)
    out = clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask))
    assert isinstance(out, PolicyLossOutput)
    torch.testing.assert_close(out.loss, t(sum(expected_pg) / 6))
    out.loss.backward()
    # d(-A r)/d logp = -A r when unclipped; 0 when the clipped branch is active
    expected_grad = [-a * r * (1 - c) / 6 for a, r, c in zip(advs, ratios, clipped)]
    torch.testing.assert_close(logp.grad.squeeze(-1), t(expected_grad))
    m = out.metrics
    assert m["clipfrac"] == pytest.approx(2 / 6)
    assert m["pg_loss"] == pytest.approx(sum(expected_pg) / 6)
    assert m["ratio_mean"] == pytest.approx(sum(ratios) / 6)
    assert m["ratio_max"] == pytest.approx(1.5)
    assert m["approx_kl"] == pytest.approx(-sum(math.log(r) for r in ratios) / 6)
    assert "kl" not in m and "clipfrac_lower" not in m
    assert all(isinstance(v, float) for v in m.values())


def test_clipped_loss_asymmetric_clip_higher():
    logp, old, adv, mask = _single_token_batch([1.25, 1.35, 0.75], [1.0, 1.0, -1.0])
    out = clipped_policy_loss(
        PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, clip_low=0.2, clip_high=0.28)
    )
    # 1.25 inside [0.8, 1.28]; 1.35 clipped to 1.28; A<0, r=.75 -> max(.75, .8) = .8
    torch.testing.assert_close(out.loss, t((-1.25 - 1.28 + 0.8) / 3))
    assert out.metrics["clipfrac"] == pytest.approx(2 / 3)


def test_dual_clip():
    ratios = [5.0, 2.0, 5.0, 0.5]
    advs = [-1.0, -1.0, 1.0, -2.0]
    # A<0, r=5: max(5, 1.2)=5 -> min(5, 3)=3 ; r=2: 2 < 3 ; A>0 untouched: -1.2
    # A=-2, r=.5: max(1, 1.6)=1.6 < 6
    expected = [3.0, 2.0, -1.2, 1.6]
    logp, old, adv, mask = _single_token_batch(ratios, advs)
    out = clipped_policy_loss(
        PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, dual_clip_c=3.0)
    )
    torch.testing.assert_close(out.loss, t(sum(expected) / 4))
    out.loss.backward()
    # dual-clipped token has constant loss -> zero gradient; r=2 token: -A r /4
    torch.testing.assert_close(logp.grad.squeeze(-1), t([0.0, 2.0 / 4, 0.0, 0.0]))
    assert out.metrics["clipfrac_lower"] == pytest.approx(1 / 4)
    # without dual clip the r=5, A<0 token is unbounded
    logp2, *_ = _single_token_batch(ratios, advs)
    out2 = clipped_policy_loss(PolicyLossInput(logp=logp2, old_logp=old, advantages=adv, mask=mask))
    torch.testing.assert_close(out2.loss, t((5.0 + 2.0 - 1.2 + 1.6) / 4))


def test_policy_gradient_identity_on_policy():
    g = torch.Generator().manual_seed(3)
    B, T = 5, 7
    old = -torch.rand(B, T, generator=g, dtype=D) * 3
    logp = old.clone().requires_grad_()
    adv = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(D)
    out = clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask))
    out.loss.backward()
    torch.testing.assert_close(logp.grad, -adv * mask / mask.sum())
    assert out.metrics["clipfrac"] == 0.0
    assert out.metrics["approx_kl"] == 0.0
    assert out.metrics["ratio_mean"] == pytest.approx(1.0)


def test_masked_tokens_do_not_matter():
    g = torch.Generator().manual_seed(4)
    B, T = 3, 5
    old = -torch.rand(B, T, generator=g, dtype=D)
    logp = (old + 0.3 * torch.randn(B, T, generator=g, dtype=D)).requires_grad_()
    adv = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) > 0.5).to(D)
    out = clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask))
    logp_garbage = logp.detach() + (1 - mask) * 100.0  # huge ratios on masked tokens
    out2 = clipped_policy_loss(
        PolicyLossInput(logp=logp_garbage, old_logp=old, advantages=adv, mask=mask)
    )
    torch.testing.assert_close(out.loss.detach(), out2.loss)
    assert out.metrics["ratio_max"] == pytest.approx(out2.metrics["ratio_max"])
    out.loss.backward()
    assert torch.equal(logp.grad * (1 - mask), torch.zeros(B, T, dtype=D))


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_term_added(est):
    g = torch.Generator().manual_seed(5)
    B, T = 4, 6
    old = -torch.rand(B, T, generator=g, dtype=D)
    logp = (old + 0.1 * torch.randn(B, T, generator=g, dtype=D)).requires_grad_()
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(D)
    base = PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, ref_logp=ref)
    no_kl = clipped_policy_loss(base)
    kw = dict(base.__dict__, kl_coef=0.1, kl_estimator=est)
    with_kl = clipped_policy_loss(PolicyLossInput(**kw))
    kl = kl_estimate(logp, ref, est)
    expected = no_kl.loss + 0.1 * (kl * mask).sum() / mask.sum()
    torch.testing.assert_close(with_kl.loss, expected)
    assert with_kl.metrics["kl"] == pytest.approx(((kl * mask).sum() / mask.sum()).item())
    # gradient of the KL part flows to logp
    (g1,) = torch.autograd.grad(with_kl.loss - no_kl.loss, logp)
    (g2,) = torch.autograd.grad(0.1 * (kl * mask).sum() / mask.sum(), logp)
    torch.testing.assert_close(g1, g2)


def test_kl_requires_ref():
    logp, old, adv, mask = _single_token_batch([1.0], [1.0])
    with pytest.raises(ValueError, match="ref_logp"):
        clipped_policy_loss(
            PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, kl_coef=0.1)
        )


def test_policy_loss_validation():
    logp, old, adv, mask = _single_token_batch([1.0], [1.0])
    with pytest.raises(ValueError):
        clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, dual_clip_c=1.0))
    with pytest.raises(ValueError):
        clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old[:0], advantages=adv, mask=mask))
    with pytest.raises(ValueError):
        clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask, clip_low=1.0))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_micro_batches_equal_full_batch(mode):
    g = torch.Generator().manual_seed(6)
    B, T = 6, 5
    old = -torch.rand(B, T, generator=g, dtype=D)
    lp = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(D)
    mask[1] = 0
    common = dict(kl_coef=0.05, agg_mode=mode, dual_clip_c=3.0, clip_high=0.28)

    weights = _weights(mode, mask)
    full_lp = lp.clone().requires_grad_()
    full = clipped_policy_loss(
        PolicyLossInput(logp=full_lp, old_logp=old, advantages=adv, mask=mask, ref_logp=ref, **common, **weights)
    ).loss
    full.backward()

    norms = _norms_for(mode, mask)
    micro_lp = lp.clone().requires_grad_()
    total = 0.0
    for sl in (slice(0, 2), slice(2, B)):
        total = total + clipped_policy_loss(
            PolicyLossInput(
                logp=micro_lp[sl], old_logp=old[sl], advantages=adv[sl], mask=mask[sl],
                ref_logp=ref[sl], **common, **norms, **_sliced(weights, sl),
            )
        ).loss
    total.backward()
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(micro_lp.grad, full_lp.grad)


def test_policy_loss_all_masked_is_zero():
    logp, old, adv, mask = _single_token_batch([1.3, 0.7], [1.0, -1.0])
    out = clipped_policy_loss(PolicyLossInput(logp=logp, old_logp=old, advantages=adv, mask=mask * 0))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert all(math.isfinite(v) for v in out.metrics.values())


# --------------------------------------------------------------------------- registry / specs


def _input(rewards, groups, mask=None):
    rewards = t(rewards)
    mask = torch.ones(len(rewards), 2, dtype=D) if mask is None else mask
    return AdvantageInput(rewards=rewards, group_index=torch.tensor(groups), correct=rewards > 0.5, mask=mask,
                          token_penalty=torch.zeros_like(mask))


def test_registered_algorithms_bundle_their_advantage_and_loss():
    grpo, dr = get_algorithm("grpo"), get_algorithm("drgrpo")
    assert grpo.loss is clipped_policy_loss and dr.loss is clipped_policy_loss
    inp = _input([1.0, 0.0, 0.0, 1.0], [0, 0, 0, 0])
    torch.testing.assert_close(grpo.advantages(inp, grpo.options()).advantages.double(),
                               grpo_advantages(inp.rewards, inp.group_index).double())
    torch.testing.assert_close(dr.advantages(inp, dr.options()).advantages, t([0.5, -0.5, -0.5, 0.5]))
    assert grpo.needs_old_logprobs and not grpo.needs_critic and grpo.zero_advantage_has_zero_loss
    with pytest.raises(Exception):
        grpo.name = "x"  # frozen


def test_sequence_rewards_subtract_the_summed_kl_penalty():
    inp = _input([1.0, 0.0], [0, 0], mask=t([[1, 1], [1, 0]]))
    inp.token_penalty = t([[0.1, 0.2], [0.3, 0.0]])
    torch.testing.assert_close(inp.sequence_rewards().double(), t([0.7, -0.3]))
    # token rewards: the score on the last policy token, minus each token's penalty
    torch.testing.assert_close(inp.token_rewards().double(), t([[-0.1, 0.8], [-0.3, 0.0]]))


def test_unknown_algorithm_lists_the_registered_ones():
    with pytest.raises(KeyError) as e:
        get_algorithm("nope")
    assert "nope" in str(e.value) and "drgrpo" in str(e.value) and "file.py:ATTR" in str(e.value)


def test_registering_another_algorithm_under_a_taken_name_is_refused():
    def loss(inp):
        raise AssertionError

    mine = Algorithm(name="_test_duplicate", advantages=lambda inp, opts: None, loss=loss)
    try:
        assert register_algorithm(mine) is mine
        assert register_algorithm(mine) is mine  # the same object: idempotent
        with pytest.raises(ValueError, match="already registered"):
            register_algorithm(Algorithm(name="grpo", advantages=lambda inp, opts: None, loss=loss))
        assert get_algorithm("_test_duplicate") is mine
    finally:
        reg._ALGORITHMS.pop("_test_duplicate", None)


def test_package_is_pure_torch():
    code = (
        "import sys, algorithms\n"
        "bad = [m for m in ('ray', 'vllm', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root():
    import pathlib

    return pathlib.Path(algorithms.__file__).resolve().parent.parent
