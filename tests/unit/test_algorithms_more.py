"""Unit tests for NFT, RAFT/RAFT++, PPO (GAE, value loss) and KL-in-reward."""

from __future__ import annotations

import math

import pytest
import torch

import algorithms
from algorithms import (
    PolicyLossInput,
    aggregate,
    clipped_policy_loss,
    get_algorithm,
    grpo_advantages,
    kl_estimate,
    kl_penalty,
)
from algorithms.aggregation import PROMPT_MODES, prompt_token_weights
from algorithms.contract import spread
from algorithms.nft import NFTOptions, nft_advantages, nft_policy_loss
from algorithms.ppo import gae_advantages, outcome_token_rewards, value_loss, whiten
from algorithms.raft import nll_policy_loss, raft_advantages, raftpp_advantages


def drgrpo_advantages(rewards, groups):
    return grpo_advantages(rewards, groups, norm_by_std=False)

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


def _norms(mode, mask):
    seqs = (mask.sum(-1) > 0).sum() if mode == "seq-mean-token-mean" else mask.shape[0]
    return dict(token_normalizer=mask.sum(), seq_normalizer=seqs, max_tokens=mask.shape[1])


# --------------------------------------------------------------------------- GRPO std option


def test_grpo_population_std():
    rewards, groups = t([1, 0, 0, 1, 3]), torch.tensor([0, 0, 0, 0, 1])
    # group 0: mean .5, population std .5 -> +-1
    torch.testing.assert_close(grpo_advantages(rewards, groups, eps=0.0, unbiased_std=False), t([1, -1, -1, 1, 0]))
    a = 0.5 * math.sqrt(3)  # default stays unbiased
    torch.testing.assert_close(grpo_advantages(rewards, groups, eps=0.0), t([a, -a, -a, a, 0]))


# --------------------------------------------------------------------------- NFT advantages


def test_nft_advantages_hand_computed():
    # group 0: 1/4 correct; group 1: 3/4; group 2: all correct; group 3: singleton
    correct = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0], dtype=torch.bool)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    rewards = torch.zeros(11, dtype=D)  # ignored when `correct` is given
    out = nft_advantages(rewards, groups, correct=correct, nft_weight_mode=2)
    assert set(out) == {"advantages", "nft_r_hat", "nft_positive", "nft_weight"}
    torch.testing.assert_close(out["nft_positive"], correct.to(D))
    torch.testing.assert_close(out["nft_r_hat"], t([0.25] * 4 + [0.75] * 4 + [0.98] * 2 + [0.02]))
    w0, w1 = math.sqrt(3), math.sqrt(1 / 3)
    torch.testing.assert_close(out["nft_weight"], t([w0] * 4 + [w1] * 4 + [0, 0, 0]))
    # negatives: -w r/(1-r): -sqrt3/3 and -sqrt(1/3)*3
    n0, n1 = -w0 / 3, -w1 * 3
    torch.testing.assert_close(out["advantages"], t([w0, n0, n0, n0, w1, w1, w1, n1, 0, 0, 0]))

    m1 = nft_advantages(rewards, groups, correct=correct, nft_weight_mode=1)
    torch.testing.assert_close(m1["nft_weight"], t([0.75] * 4 + [0.25] * 4 + [0, 0, 0]))
    torch.testing.assert_close(m1["advantages"], t([0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75, 0, 0, 0]))
    m0 = nft_advantages(rewards, groups, correct=correct, nft_weight_mode=0)
    torch.testing.assert_close(m0["advantages"], t([1, -1 / 3, -1 / 3, -1 / 3, 1, 1, 1, -3, 0, 0, 0]))


def test_nft_advantages_clamp_rewards_fallback_and_errors():
    # 1 of 100 correct: r = .01 clamped to .05
    rewards = torch.zeros(100, dtype=D)
    rewards[0] = 1.0
    out = nft_advantages(rewards, torch.zeros(100, dtype=torch.long), nft_r_clamp=0.05, nft_weight_mode=1)
    torch.testing.assert_close(out["nft_r_hat"], torch.full((100,), 0.05, dtype=D))
    assert out["advantages"][0].item() == pytest.approx(0.95)
    assert out["advantages"][1].item() == pytest.approx(-0.95 * 0.05 / 0.95)
    # rewards > 0.5 decides without `correct`
    o = nft_advantages(t([0.6, 0.4]), torch.tensor([0, 0]))
    assert o["nft_positive"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError):
        nft_advantages(t([1, 0]), torch.tensor([0, 0]), nft_weight_mode=3)
    with pytest.raises(ValueError):
        nft_advantages(t([1, 0]), torch.tensor([0, 0]), nft_r_clamp=0.0)
    with pytest.raises(ValueError):
        nft_advantages(t([1, 0]), torch.tensor([0, 0]), correct=torch.tensor([True]))
    assert nft_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))["advantages"].numel() == 0


# --------------------------------------------------------------------------- NFT loss


def _nft_input(logp, old, mask, adv_out, **kw):
    extras = {k: spread(v, mask) for k, v in adv_out.items() if k != "advantages"}
    return PolicyLossInput(
        logp=logp, old_logp=old, advantages=spread(adv_out["advantages"], mask),
        mask=mask, extras=extras, **kw,
    )


def test_nft_loss_hand_computed():
    # one group of 4: samples 0 correct, 1-3 wrong -> r_hat = .25, mode 0 (w = 1)
    adv = nft_advantages(t([1, 0, 0, 0]), torch.zeros(4, dtype=torch.long), nft_weight_mode=0)
    ratios = t([[2.0, 0.5], [2.0, 0.5], [1.0, 3.0], [4.5, 9.0]])
    mask = t([[1, 1], [1, 1], [1, 0], [1, 1]])
    logp = torch.log(ratios).requires_grad_()
    old = torch.zeros(4, 2, dtype=D)
    out = nft_policy_loss(_nft_input(logp, old, mask, adv))
    # positive: -log R ; negative: -log((1 - .25 R) / .75), floor 1e-3 in value
    neg = lambda R: -math.log(max((1 - 0.25 * R) / 0.75, 1e-3))  # noqa: E731
    per = [-math.log(2.0), -math.log(0.5), neg(2.0), neg(0.5), neg(1.0), neg(4.5), neg(9.0)]
    torch.testing.assert_close(out.loss, t(sum(per) / 7))
    out.loss.backward()
    # d/dlogp: positive -1; negative .25R / (1 - .25R), also through the floor
    g = lambda R: 0.25 * R / (1 - 0.25 * R)  # noqa: E731
    expected = t([[-1, -1], [g(2.0), g(0.5)], [g(1.0), 0.0], [0.25 * 4.5 / 0.75 / 1e-3, 0.25 * 9 / 0.75 / 1e-3]])
    torch.testing.assert_close(logp.grad, expected / 7)
    m = out.metrics
    assert m["pg_loss"] == pytest.approx(sum(per) / 7)
    assert m["neg_clipfrac"] == pytest.approx(2 / 5)  # R = 4.5 and 9 of 5 negative tokens
    assert m["ratio_max"] == pytest.approx(9.0)
    assert m["approx_kl"] == pytest.approx(-float(torch.log(ratios)[mask > 0].sum()) / 7)
    assert "kl" not in m


def test_nft_straight_through_clip():
    adv = {"advantages": t([-1.0]), "nft_r_hat": t([0.5]), "nft_positive": t([0.0]), "nft_weight": t([0.7])}
    mask = t([[1.0]])
    logp = torch.log(t([[2.5]])).requires_grad_()
    eps = 0.01
    out = nft_policy_loss(_nft_input(logp, torch.zeros(1, 1, dtype=D), mask, adv, options=NFTOptions(eps_neg=eps)))
    # x = (1 - 1.25) / .5 = -.5 -> value floor eps, gradient of -log at eps times dx
    torch.testing.assert_close(out.loss, t(-0.7 * math.log(eps)))
    out.loss.backward()
    torch.testing.assert_close(logp.grad, t([[0.7 * (0.5 * 2.5 / 0.5) / eps]]))
    assert out.metrics["neg_clipfrac"] == 1.0


def test_nft_log_ratio_clamp_option():
    adv = {"advantages": t([1.0]), "nft_r_hat": t([0.5]), "nft_positive": t([1.0]), "nft_weight": t([1.0])}
    mask = t([[1.0, 1.0]])
    logp = t([[5.0, -1.0]]).requires_grad_()
    out = nft_policy_loss(_nft_input(logp, torch.zeros(1, 2, dtype=D), mask, adv, options=NFTOptions(log_ratio_clamp=2.0)))
    torch.testing.assert_close(out.loss, t((-2.0 + 1.0) / 2))
    out.loss.backward()
    torch.testing.assert_close(logp.grad, t([[0.0, -0.5]]))  # clamped token has no gradient


class _TinyPolicy(torch.nn.Module):
    """Token log-probs from a tiny model, to compare parameter gradients."""

    def __init__(self, B, T, V=5):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.x = torch.randn(B, T, 4, generator=g, dtype=D)
        self.tokens = torch.randint(0, V, (B, T), generator=g)
        self.lin = torch.nn.Linear(4, V).to(D)

    def forward(self):
        lp = torch.log_softmax(self.lin(self.x), dim=-1)
        return lp.gather(-1, self.tokens.unsqueeze(-1)).squeeze(-1)


def _mixed_batch():
    # 4 groups of n = 4: r = 1/4, 3/4, 1/2 and an all-correct (uninformative) group
    rewards = t([1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1])
    groups = torch.arange(4).repeat_interleave(4)
    B, T = 16, 6
    g = torch.Generator().manual_seed(12)
    mask = (torch.rand(B, T, generator=g) > 0.25).to(D)
    mask[:, 0] = 1
    return rewards, groups, mask


def _grad(loss_fn, inp_fn, model):
    model.zero_grad()
    logp = model()
    lp = logp.detach().requires_grad_()
    loss = loss_fn(inp_fn(lp, lp.detach())).loss
    (g_lp,) = torch.autograd.grad(loss, lp)
    loss_fn(inp_fn(logp, logp.detach())).loss.backward()  # strict on-policy: R = 1
    return g_lp, [p.grad.clone() for p in model.parameters()]


def _assert_grads_close(a, b, scale=1.0):
    torch.testing.assert_close(a[0] * scale, b[0])
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x * scale, y)


@pytest.mark.parametrize("agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("mode,baseline", [(2, "grpo_pop"), (1, "drgrpo")])
def test_nft_on_policy_gradient_equals_grpo(agg_mode, mode, baseline):
    """arXiv:2505.18116: on-policy NFT == GRPO (mode 2) / Dr. GRPO (mode 1)."""
    rewards, groups, mask = _mixed_batch()
    model = _TinyPolicy(*mask.shape)
    nft_adv = nft_advantages(rewards, groups, nft_weight_mode=mode)
    if baseline == "grpo_pop":
        base_adv = grpo_advantages(rewards, groups, eps=0.0, unbiased_std=False)
    else:
        base_adv = drgrpo_advantages(rewards, groups)
    torch.testing.assert_close(nft_adv["advantages"], base_adv)

    g_nft = _grad(nft_policy_loss, lambda lp, old: _nft_input(lp, old, mask, nft_adv, agg_mode=agg_mode), model)
    g_base = _grad(
        clipped_policy_loss,
        lambda lp, old: PolicyLossInput(
            logp=lp, old_logp=old, advantages=spread(base_adv, mask), mask=mask, agg_mode=agg_mode
        ),
        model,
    )
    assert g_nft[0].abs().sum() > 0
    _assert_grads_close(g_nft, g_base)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_nft_on_policy_gradient_is_pg_with_its_advantage(mode):
    rewards, groups, mask = _mixed_batch()
    model = _TinyPolicy(*mask.shape)
    adv = nft_advantages(rewards, groups, nft_weight_mode=mode)
    g_nft = _grad(nft_policy_loss, lambda lp, old: _nft_input(lp, old, mask, adv), model)
    a_tok = spread(adv["advantages"], mask)
    g_pg = _grad(clipped_policy_loss, lambda lp, old: PolicyLossInput(lp, old, a_tok, mask), model)
    _assert_grads_close(g_nft, g_pg)


def test_nft_vs_default_grpo_unbiased_std_factor():
    rewards, groups, mask = _mixed_batch()
    n = 4
    model = _TinyPolicy(*mask.shape)
    adv = nft_advantages(rewards, groups, nft_weight_mode=2)
    g_nft = _grad(nft_policy_loss, lambda lp, old: _nft_input(lp, old, mask, adv), model)
    a_tok = spread(grpo_advantages(rewards, groups, eps=0.0), mask)
    g_grpo = _grad(clipped_policy_loss, lambda lp, old: PolicyLossInput(lp, old, a_tok, mask), model)
    _assert_grads_close(g_nft, g_grpo, scale=math.sqrt((n - 1) / n))


@pytest.mark.parametrize("agg_mode", algorithms.AGG_MODES)
def test_nft_micro_batches_equal_full_batch_with_kl(agg_mode):
    rewards, groups, mask = _mixed_batch()
    B, T = mask.shape
    g = torch.Generator().manual_seed(13)
    old = -torch.rand(B, T, generator=g, dtype=D) * 2
    lp0 = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    ref = old + 0.2 * torch.randn(B, T, generator=g, dtype=D)
    adv = nft_advantages(rewards, groups)
    kw = dict(kl_coef=0.05, agg_mode=agg_mode)
    weight = prompt_token_weights(mask, groups, agg_mode) if agg_mode in PROMPT_MODES else None

    def inp(sl, lp, **extra):
        sub = {k: v[sl] for k, v in adv.items()}
        part = None if weight is None else weight[sl]
        return _nft_input(lp, old[sl], mask[sl], sub, ref_logp=ref[sl], token_weight=part, **kw, **extra)

    full_lp = lp0.clone().requires_grad_()
    full = nft_policy_loss(inp(slice(0, B), full_lp))
    full.loss.backward()
    assert "kl" in full.metrics
    micro_lp = lp0.clone().requires_grad_()
    total = sum(nft_policy_loss(inp(sl, micro_lp[sl], **_norms(agg_mode, mask))).loss for sl in (slice(0, 5), slice(5, B)))
    total.backward()
    torch.testing.assert_close(total, full.loss)
    torch.testing.assert_close(micro_lp.grad, full_lp.grad)
    # KL part equals kl_coef * aggregated estimate
    no_kl = nft_policy_loss(_nft_input(full_lp, old, mask, adv, agg_mode=agg_mode, token_weight=weight))
    kl = aggregate(kl_estimate(full_lp, ref, "k3"), mask, agg_mode, token_weight=weight)
    torch.testing.assert_close(full.loss - no_kl.loss, 0.05 * kl)


def test_nft_loss_needs_extras():
    mask = t([[1.0]])
    with pytest.raises(ValueError, match="nft_r_hat"):
        nft_policy_loss(PolicyLossInput(logp=mask * 0, old_logp=mask * 0, advantages=mask, mask=mask))


# --------------------------------------------------------------------------- RAFT


def test_raft_advantages():
    rewards, groups = t([1.0, 0.0, 0.7, 0.3, -1.0]), torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(raft_advantages(rewards, groups), t([1, 0, 1, 0, 0]))
    correct = torch.tensor([True, False, False, True, True])
    torch.testing.assert_close(raft_advantages(rewards, groups, correct=correct), t([1, 0, 0, 1, 1]))
    torch.testing.assert_close(raftpp_advantages(rewards, groups), t([1, 0, 0.7, 0, 0]))
    # accepted with a negative reward: max(r, 0) = 0
    torch.testing.assert_close(raftpp_advantages(rewards, groups, correct=correct), t([1, 0, 0, 0.3, 0]))
    assert raft_advantages(torch.tensor([1, 0]), torch.tensor([0, 0])).dtype.is_floating_point


def test_nll_loss_hand_computed_and_kl():
    logp = t([[-1.0, -2.0], [-0.5, -3.0]]).requires_grad_()
    adv = t([[1.0, 1.0], [0.0, 0.0]])
    mask = t([[1, 1], [1, 0]])
    ref = t([[-1.5, -2.0], [-0.5, -1.0]])
    out = nll_policy_loss(PolicyLossInput(logp=logp, old_logp=None, advantages=adv, mask=mask))
    torch.testing.assert_close(out.loss, t(3.0 / 3))
    assert out.metrics["nll"] == pytest.approx(1.5)  # only A != 0 tokens
    out.loss.backward()
    torch.testing.assert_close(logp.grad, t([[-1 / 3, -1 / 3], [0, 0]]))
    kl = nll_policy_loss(PolicyLossInput(logp=logp, old_logp=None, advantages=adv, mask=mask, ref_logp=ref,
                                         kl_coef=0.1, kl_estimator="k1"))
    torch.testing.assert_close(kl.loss, t(1.0 + 0.1 * 0.5 / 3))
    assert kl.metrics["kl"] == pytest.approx(0.5 / 3)


def test_nll_gradient_is_sft_on_accepted():
    g = torch.Generator().manual_seed(14)
    B, T = 6, 5
    model = _TinyPolicy(B, T)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(D)
    rewards = t([1, 0, 1, 1, 0, 0])
    acc = raft_advantages(rewards, torch.zeros(B, dtype=torch.long))
    adv = spread(acc, mask)
    n_acc = (mask * acc[:, None]).sum()
    logp = model()
    nll_policy_loss(PolicyLossInput(logp, None, adv, mask, token_normalizer=n_acc)).loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    keep = acc > 0
    lp = model()[keep]
    (-(lp * mask[keep]).sum() / mask[keep].sum()).backward()
    for a, b in zip(got, model.parameters()):
        torch.testing.assert_close(a, b.grad)


# --------------------------------------------------------------------------- PPO


def test_outcome_token_rewards():
    mask = t([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = outcome_token_rewards(t([2.0, 3.0, 4.0, 5.0]), mask)
    torch.testing.assert_close(out, t([[0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0], [0, 0, 0, 5]]))


def _gae_loop(r, v, m, gamma, lam):
    adv = torch.zeros_like(r)
    for b in range(r.shape[0]):
        idx = [i for i in range(r.shape[1]) if m[b, i] > 0]
        a_next, v_next = 0.0, 0.0
        for i in reversed(idx):
            delta = r[b, i] + gamma * v_next - v[b, i]
            a_next = delta + gamma * lam * a_next
            adv[b, i] = a_next
            v_next = v[b, i]
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.95), (0.99, 0.0), (0.5, 1.0)])
def test_gae_matches_loop(gamma, lam):
    g = torch.Generator().manual_seed(15)
    B, T = 5, 9
    r = torch.randn(B, T, generator=g, dtype=D)
    v = torch.randn(B, T, generator=g, dtype=D)
    m = (torch.rand(B, T, generator=g) > 0.3).to(D)
    m[1, 2:5] = 0  # a tool-output hole
    m[3] = 0
    adv, ret = gae_advantages(r, v, m, gamma=gamma, lam=lam)
    ref = _gae_loop(r, v, m, gamma, lam)
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(ret, (ref + v) * m)
    assert torch.equal(adv * (1 - m), torch.zeros_like(adv))


def test_gae_outcome_reward_is_r_minus_v():
    mask = t([[1, 1, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    v = t([[0.1, 0.2, 9.0, 0.3, 0.4, 9.0], [0.5, 0.6, 0.7, 9.0, 9.0, 9.0]])
    scores = t([1.0, -2.0])
    adv, ret = gae_advantages(outcome_token_rewards(scores, mask), v, mask)
    torch.testing.assert_close(adv, (scores[:, None] - v) * mask)
    torch.testing.assert_close(ret, scores[:, None] * mask)


def test_whiten():
    x = t([[1.0, 2.0, 99.0], [3.0, 4.0, -99.0]])
    m = t([[1, 1, 0], [1, 1, 0]])
    # masked values 1..4: mean 2.5, population var 1.25
    s = math.sqrt(1.25)
    torch.testing.assert_close(whiten(x, m, eps=0.0), t([[-1.5 / s, -0.5 / s, 0], [0.5 / s, 1.5 / s, 0]]))
    torch.testing.assert_close(whiten(x, m, eps=0.0, shift_mean=False), t([[2.5 - 1.5 / s, 2.5 - 0.5 / s, 0], [2.5 + 0.5 / s, 2.5 + 1.5 / s, 0]]))


def test_value_loss_hand_computed():
    v = t([[1.0, 0.0, 2.0, 5.0]]).requires_grad_()
    old = t([[0.0, 0.0, 0.0, 0.0]])
    ret = t([[2.0, 1.0, 0.0, 7.0]])
    m = t([[1, 1, 1, 0]])
    # clip .5: v_clip = [.5, 0, .5]; err = [1, 1, 4]; err_clip = [2.25, 1, .25]
    loss, met = value_loss(v, old, ret, m, clip=0.5)
    torch.testing.assert_close(loss, t(0.5 * (2.25 + 1 + 4) / 3))
    assert met["vf_clipfrac"] == pytest.approx(1 / 3)
    assert met["value_mean"] == pytest.approx(1.0) and met["return_mean"] == pytest.approx(1.0)
    # residual ret - v = [1, 1, -2]: var 2; var(ret) = 2/3 -> 1 - 3
    assert met["explained_variance"] == pytest.approx(-2.0)
    loss.backward()
    torch.testing.assert_close(v.grad, t([[0.0, -1 / 3, 2 / 3, 0.0]]))  # clipped token has no grad
    loss2, met2 = value_loss(v, old, ret, m, clip=None)
    torch.testing.assert_close(loss2, t(0.5 * (1 + 1 + 4) / 3))
    assert met2["vf_clipfrac"] == 0.0
    loss3, _ = value_loss(v, old, ret, m, clip=None, agg_mode="seq-mean-token-sum", seq_normalizer=2)
    torch.testing.assert_close(loss3, t(0.5 * 6 / 2))


# --------------------------------------------------------------------------- KL in reward


def test_kl_penalty():
    logp = t([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]]).requires_grad_()
    ref = t([[-1.5, -1.0, -9.0], [-1.0, -3.0, -1.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    pen = kl_penalty(logp, ref, mask, 0.1)
    torch.testing.assert_close(pen, t([[0.05, -0.1, 0.0], [0.0, 0.2, 0.0]]))
    assert not pen.requires_grad
    torch.testing.assert_close(kl_penalty(logp, ref, mask, 2.0, "k2"), t([[0.25, 1.0, 0.0], [0.0, 4.0, 0.0]]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref[:1], mask, 0.1)


# --------------------------------------------------------------------------- specs


def test_algorithm_flags():
    nft, raft, rpp, ppo = (get_algorithm(n) for n in ("nft", "raft", "raftpp", "ppo"))
    assert nft.loss is nft_policy_loss and nft.options is NFTOptions and nft.drop_zero_advantage
    assert not nft.advantage_weighting_exact
    assert raft.loss is nll_policy_loss and not raft.needs_old_logprobs and raft.drop_zero_advantage
    assert rpp.loss is clipped_policy_loss and rpp.needs_old_logprobs and rpp.drop_zero_advantage
    assert ppo.needs_critic and ppo.loss is clipped_policy_loss
