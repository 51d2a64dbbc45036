"""PPO with a learned critic: token rewards, GAE, whitening, clipped value loss.

* PPO (Schulman et al., 2017, arXiv:1707.06347) with the clipped policy loss
  of :mod:`algorithms.policy_loss`; the advantage comes from a value model.
* GAE (Schulman et al., 2016, "High-Dimensional Continuous Control Using
  Generalized Advantage Estimation", arXiv:1506.02438):
  ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``.
  ``gamma = lam = 1`` (common for LLM outcome rewards) gives the unbiased
  Monte-Carlo advantage ``R - V_t``.
* Value clipping as in OpenAI baselines' ``ppo2`` and verl: the critic may
  not move its prediction by more than ``clip`` from the rollout-time value.

Multi-turn responses interleave policy tokens with tool/environment output
(``mask == 0`` inside the response). Those are not actions: GAE steps over
them, carrying the next action's value and advantage across the hole, so
``gamma`` discounts per policy token and the environment text costs nothing.

The critic's value-loss clip is a critic setting (``critic.value_clip``); GAE's are
:class:`PPOOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .aggregation import aggregate
from .contract import AdvantageInput, AdvantageOutput, Algorithm, OptionError
from .policy_loss import clipped_policy_loss
from .registry import register_algorithm

Number = Union[int, float, Tensor]


def _check_bt(**tensors: Tensor) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected equal [B, T] shapes, got {shapes}")


def outcome_token_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """``[B, T]`` token rewards: ``scores[b]`` on row b's last ``mask == 1``
    token, 0 elsewhere (rows without such a token stay all zero)."""
    if scores.dim() != 1 or mask.dim() != 2 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"expected scores [B] and mask [B, T], got {tuple(scores.shape)}, {tuple(mask.shape)}")
    dtype = scores.dtype if scores.dtype.is_floating_point else torch.get_default_dtype()
    out = torch.zeros(mask.shape, dtype=dtype, device=scores.device)
    m = mask > 0
    if mask.shape[1] == 0:
        return out
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).expand_as(m)
    last = torch.where(m, pos, torch.full_like(pos, -1)).amax(dim=-1)  # [B], -1 if empty
    has = last >= 0
    rows = torch.nonzero(has).squeeze(-1)
    out[rows, last[rows]] = scores.to(dtype)[rows]
    return out


@torch.no_grad()
def gae_advantages(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> Tuple[Tensor, Tensor]:
    """GAE over the ``mask == 1`` tokens; returns ``(advantages, returns)``.

    Positions with ``mask == 0`` are skipped (their rewards and values are
    ignored); the value after a row's last policy token is 0 (terminal).
    ``returns = advantages + values``. Both are 0 where ``mask == 0``.
    """
    _check_bt(token_rewards=token_rewards, values=values, mask=mask)
    dtype = torch.promote_types(token_rewards.dtype, values.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    r, v = token_rewards.to(dtype), values.to(dtype)
    m = mask > 0
    B, T = r.shape
    adv = torch.zeros(B, T, dtype=dtype, device=r.device)
    next_v = torch.zeros(B, dtype=dtype, device=r.device)
    next_a = torch.zeros(B, dtype=dtype, device=r.device)
    for t in reversed(range(T)):
        mt = m[:, t]
        delta = r[:, t] + gamma * next_v - v[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = torch.where(mt, a, torch.zeros_like(a))
        next_v = torch.where(mt, v[:, t], next_v)
        next_a = torch.where(mt, a, next_a)
    returns = torch.where(m, adv + v, torch.zeros_like(adv))
    return adv, returns


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over ``mask == 1`` (population var);
    ``shift_mean=False`` adds the mean back (rescale only). 0 outside mask."""
    _check_bt(x=x, mask=mask)
    m = mask.to(x.dtype)
    x = torch.where(mask > 0, x, torch.zeros_like(x))
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = ((x - mean).square() * m).sum() / n
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask > 0, out, torch.zeros_like(out))


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: Optional[float] = 0.5,
    agg_mode: str = "token-mean",
    token_normalizer: Optional[Number] = None,
    seq_normalizer: Optional[Number] = None,
    max_tokens: Optional[Number] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """Clipped critic loss ``0.5 * max((v - R)^2, (v_clip - R)^2)``, aggregated.

    ``v_clip = old_v + clamp(v - old_v, -clip, clip)``; ``clip=None`` gives
    the plain squared error. The normalisers are the global ones, as for
    the policy loss (:mod:`algorithms.aggregation`).

    Metrics: ``vf_loss`` (token mean), ``vf_clipfrac`` (clipped branch
    strictly larger), ``value_mean``, ``return_mean``,
    ``explained_variance`` (``1 - Var(R - v) / Var(R)``; 0 if ``Var(R) = 0``).
    """
    _check_bt(values=values, old_values=old_values, returns=returns, mask=mask)
    if clip is not None and clip < 0:
        raise ValueError(f"clip must be >= 0 or None, got {clip}")
    dtype = values.dtype
    m = mask.to(dtype)
    ret = returns.to(dtype)
    err = (values - ret).square()
    if clip is None:
        per_token = 0.5 * err
        clipped = torch.zeros_like(err, dtype=torch.bool)
    else:
        old = old_values.to(dtype)
        v_clip = old + torch.clamp(values - old, -clip, clip)
        err_clip = (v_clip - ret).square()
        per_token = 0.5 * torch.maximum(err, err_clip)
        clipped = err_clip > err
    loss = aggregate(
        per_token,
        m,
        agg_mode,
        token_normalizer=token_normalizer,
        seq_normalizer=seq_normalizer,
        max_tokens=max_tokens,
    )

    with torch.no_grad():
        n = m.sum().clamp(min=1)

        def mmean(x: Tensor) -> Tensor:
            return (x * m).sum() / n

        ret_var = mmean((ret - mmean(ret)).square())
        res = ret - values
        res_var = mmean((res - mmean(res)).square())
        ev = torch.where(ret_var > 0, 1.0 - res_var / torch.where(ret_var > 0, ret_var, 1.0), 0.0 * ret_var)
        vals = [mmean(per_token), mmean(clipped.to(dtype)), mmean(values), mmean(ret), ev]
        names = ["vf_loss", "vf_clipfrac", "value_mean", "return_mean", "explained_variance"]
        metrics = dict(zip(names, torch.stack([x.detach().float() for x in vals]).tolist()))
    return loss, metrics


@dataclass(frozen=True)
class PPOOptions:
    gamma: float = 1.0  # discount per policy token
    lam: float = 1.0  # GAE lambda
    whiten_advantages: bool = True  # over the batch's policy tokens

    def __post_init__(self):
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise OptionError(key, f"must be in [0, 1], got {getattr(self, key)}")


def _gae(inp: AdvantageInput, opts: PPOOptions) -> AdvantageOutput:
    adv, returns = gae_advantages(inp.token_rewards(), inp.values, inp.mask, opts.gamma, opts.lam)
    if opts.whiten_advantages:
        adv = whiten(adv, inp.mask)
    return AdvantageOutput(adv, returns=returns)


PPO = register_algorithm(Algorithm(
    name="ppo", advantages=_gae, loss=clipped_policy_loss, options=PPOOptions, needs_critic=True,
    zero_advantage_has_zero_loss=True,
    description="GAE from a learned critic on the outcome reward, PPO clip",
))
