"""NFT: Negative-aware Fine-Tuning (Chen et al., 2025, "Bridging Supervised
Learning and Reinforcement Learning in Math Reasoning", arXiv:2505.18116).

NFT is maximum likelihood on self-generated answers that *also* learns from
the wrong ones. For a prompt with accuracy ``r`` the policy splits as
``pi_old = r * pi_pos + (1 - r) * pi_neg``; training ``pi`` as the positive
model implicitly defines a negative model, whose likelihood ratio on a
negative token is ``(1 - r R) / (1 - r)`` with ``R = pi / pi_old``. Per token:

* positive sample: ``-log R``
* negative sample: ``-log max((1 - r_hat R) / (1 - r_hat), eps_neg)``

with ``r_hat = clamp(r, c, 1 - c)``, times a prompt weight ``w``. The
``max(., eps)`` is applied to the value only; the gradient passes straight
through (as the reference implementation does) so a negative token whose
implicit ratio has collapsed keeps being pushed down.

At ``R = 1`` (strict on-policy) the token gradient is ``-w`` for positives and
``+w r_hat / (1 - r_hat)`` for negatives, i.e. the policy gradient with
advantage ``w * (+1 | -r_hat / (1 - r_hat))``. With binary rewards this is
GRPO's advantage (population std, eps 0) for ``w = sqrt((1 - r) / r)`` and
Dr. GRPO's for ``w = 1 - r`` -- the paper's equivalence result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Literal, Optional

import torch
from torch import Tensor

from .advantages import _group_stats
from .policy_loss import PolicyLossInput, PolicyLossOutput, _masked_mean, _validate, kl_and_aggregate
from .contract import AdvantageInput, AdvantageOutput, Algorithm, OptionError
from .registry import register_algorithm

NFT_WEIGHT_MODES = (0, 1, 2)
NFT_EXTRAS = ("nft_r_hat", "nft_positive", "nft_weight")


@dataclass(frozen=True)
class NFTOptions:
    # prompt weight w: 0 -> 1; 1 -> 1 - r (Dr. GRPO-like); 2 -> sqrt((1 - r) / r) (GRPO-like)
    weight_mode: Literal[0, 1, 2] = 2
    r_clamp: float = 0.02  # r_hat = clamp(r, c, 1 - c) keeps the negative term finite
    eps_neg: float = 1e-3  # value floor of the implicit negative ratio
    log_ratio_clamp: float = 10.0  # |log R| bound

    def __post_init__(self):
        if not 0.0 < self.r_clamp < 0.5:
            raise OptionError("r_clamp", f"must be in (0, 0.5), got {self.r_clamp}")
        if not 0.0 < self.eps_neg < 1.0:
            raise OptionError("eps_neg", f"must be in (0, 1), got {self.eps_neg}")
        if not self.log_ratio_clamp > 0:
            raise OptionError("log_ratio_clamp", f"must be > 0, got {self.log_ratio_clamp}")


def positive_mask(rewards: Tensor, correct: Optional[Tensor]) -> Tensor:
    """Bool ``[B]``: the verifier's verdict if given, else ``rewards > 0.5``."""
    if correct is None:
        return rewards > 0.5
    if correct.shape != rewards.shape:
        raise ValueError(f"correct shape {tuple(correct.shape)} != rewards shape {tuple(rewards.shape)}")
    return correct.to(rewards.device).bool()


def nft_advantages(
    rewards: Tensor,
    group_index: Tensor,
    *,
    correct: Optional[Tensor] = None,
    nft_r_clamp: float = 0.02,
    nft_weight_mode: int = 2,
) -> Dict[str, Tensor]:
    """Per-sample NFT quantities (all ``[B]``).

    Args:
        rewards, group_index: as for :func:`algorithms.grpo_advantages`.
        correct: bool verdicts; a sample is positive iff correct.
        nft_r_clamp: ``r_hat = clamp(r, c, 1 - c)`` keeps the negative
            term finite; must be in ``(0, 0.5)``.
        nft_weight_mode: prompt weight ``w``: 0 -> 1; 1 -> ``1 - r_hat``
            (Dr. GRPO-equivalent); 2 -> ``sqrt((1 - r_hat) / r_hat)``
            (GRPO-equivalent). Groups with ``r`` in {0, 1} get ``w = 0``:
            without contrast NFT reduces to plain SFT / unlikelihood, which
            the GRPO family also ignores.

    Returns:
        ``{"advantages": w * (+1 | -r_hat/(1-r_hat)), "nft_r_hat",
        "nft_positive" (1.0/0.0), "nft_weight"}``. ``advantages`` is the
        on-policy-equivalent advantage, for logging and for dropping
        uninformative samples; the loss uses the other three.
    """
    if nft_weight_mode not in NFT_WEIGHT_MODES:
        raise ValueError(f"nft_weight_mode must be one of {NFT_WEIGHT_MODES}, got {nft_weight_mode!r}")
    if not 0.0 < nft_r_clamp < 0.5:
        raise ValueError(f"nft_r_clamp must be in (0, 0.5), got {nft_r_clamp}")
    dtype = rewards.dtype if rewards.dtype.is_floating_point else torch.get_default_dtype()
    pos = positive_mask(rewards, correct).to(dtype)
    if pos.numel() == 0:
        return {k: pos.clone() for k in ("advantages",) + NFT_EXTRAS}

    r, _, _, constant = _group_stats(pos, group_index)
    informative = ~constant  # also excludes singleton groups
    r_hat = r.clamp(nft_r_clamp, 1.0 - nft_r_clamp)
    if nft_weight_mode == 0:
        w = torch.ones_like(r_hat)
    elif nft_weight_mode == 1:
        w = 1.0 - r_hat
    else:
        w = torch.sqrt((1.0 - r_hat) / r_hat)
    zero = torch.zeros_like(w)
    w = torch.where(informative, w, zero)
    adv = w * torch.where(pos > 0, torch.ones_like(r_hat), -r_hat / (1.0 - r_hat))
    adv = torch.where(informative, adv, zero)
    return {"advantages": adv, "nft_r_hat": r_hat, "nft_positive": pos, "nft_weight": w}


def nft_policy_loss(inp: PolicyLossInput) -> PolicyLossOutput:
    """NFT loss (+ ``kl_coef * KL(pi || ref)``), aggregated like
    :func:`algorithms.clipped_policy_loss`.

    Reads ``inp.extras`` ``nft_r_hat`` / ``nft_positive`` / ``nft_weight``
    (``[B, T]``, from :func:`nft_advantages`) and ``inp.options`` (:class:`NFTOptions`:
    ``log_ratio_clamp`` clamps ``log R`` both ways, ``eps_neg`` floors the negative ratio).

    Metrics: ``pg_loss`` (token mean of the weighted NFT term),
    ``approx_kl``, ``ratio_mean``, ``ratio_max``, ``neg_clipfrac`` (fraction
    of negative tokens whose implicit ratio hit ``eps_neg``), ``kl``.
    """
    _validate(inp)
    if inp.old_logp is None:
        raise ValueError("the nft loss needs old_logp")
    missing = [k for k in NFT_EXTRAS if k not in inp.extras]
    if missing:
        raise ValueError(f"the nft loss needs extras {missing} from the 'nft' advantage")
    opts = inp.options if isinstance(inp.options, NFTOptions) else NFTOptions()
    clamp, eps_neg = opts.log_ratio_clamp, opts.eps_neg

    dtype = inp.logp.dtype
    mask = inp.mask.to(dtype)
    ex = {k: inp.extras[k].to(dtype) for k in NFT_EXTRAS}
    for k, v in ex.items():
        if v.shape != inp.logp.shape:
            raise ValueError(f"extras[{k!r}] shape {tuple(v.shape)} != logp shape {tuple(inp.logp.shape)}")

    log_ratio = torch.clamp(inp.logp - inp.old_logp, -clamp, clamp)
    ratio = torch.exp(log_ratio)
    pos = ex["nft_positive"] > 0.5
    neg = ~pos & (mask > 0)
    # r_hat = 0 off the negative tokens makes x == 1 there: no inf/NaN leaks
    # through the unused torch.where branch into the gradient.
    r_neg = torch.where(neg, ex["nft_r_hat"], torch.zeros_like(ratio))
    x = (1.0 - r_neg * ratio) / (1.0 - r_neg)
    x_clip = x + (x.clamp(min=eps_neg) - x).detach()  # value floor, straight-through grad
    nft = torch.where(pos, -log_ratio, -torch.log(x_clip)) * ex["nft_weight"]

    per_token = nft
    loss, kl = kl_and_aggregate(per_token, mask, inp)

    with torch.no_grad():
        negf = neg.to(dtype)
        names = ["pg_loss", "approx_kl", "ratio_mean", "ratio_max", "neg_clipfrac"]
        vals = [
            _masked_mean(nft, mask),
            _masked_mean(inp.old_logp - inp.logp, mask),
            _masked_mean(ratio, mask),
            torch.where(mask > 0, ratio, torch.zeros_like(ratio)).amax()
            if ratio.numel()
            else ratio.new_zeros(()),
            _masked_mean((x < eps_neg).to(dtype), negf),
        ]
        if kl is not None:
            names.append("kl")
            vals.append(_masked_mean(kl, mask))
        metrics = dict(zip(names, torch.stack([v.detach().float() for v in vals]).tolist()))
    return PolicyLossOutput(loss=loss, metrics=metrics)


def _advantages(inp: AdvantageInput, opts: NFTOptions) -> AdvantageOutput:
    out = nft_advantages(inp.sequence_rewards(), inp.group_index, correct=inp.correct,
                         nft_r_clamp=opts.r_clamp, nft_weight_mode=opts.weight_mode)
    return AdvantageOutput(out.pop("advantages"), extras=out)


NFT = register_algorithm(Algorithm(
    name="nft", advantages=_advantages, loss=nft_policy_loss, options=NFTOptions,
    drop_zero_advantage=True,
    advantage_weighting_exact=False,  # the implicit negative policy is not linear in A
    description="negative-aware fine-tuning: likelihood on positives, implicit negative policy on the rest",
))
