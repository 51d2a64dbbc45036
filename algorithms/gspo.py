"""GSPO: Group Sequence Policy Optimization (Zheng et al., 2025, arXiv:2507.18071).

GRPO's group-normalised advantages, but the importance ratio and its clipping are per
sequence: ``s_i = (pi(y_i|x) / pi_old(y_i|x)) ** (1 / |y_i|) = exp(mean_t (logp - old_logp))``,
the length-normalised sequence likelihood ratio. Per sequence the loss is
``-min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i)``, averaged over sequences. The
clip range is far narrower than PPO's (the paper uses 3e-4 / 4e-4), as a sequence ratio is a
geometric mean of token ratios. A KL loss term (``algorithm.kl_coef``) is added per token.

The sequence advantage is the token mean of ``inp.advantages`` over the row, so per-token
importance weights would be averaged, not applied: asynchronous rollout is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .advantages import grpo_advantages
from .contract import AdvantageInput, AdvantageOutput, Algorithm, OptionError
from .policy_loss import PolicyLossInput, PolicyLossOutput, _masked_mean, _validate, kl_and_aggregate
from .registry import register_algorithm


@dataclass(frozen=True)
class GSPOOptions:
    clip_low: float = 3e-4  # sequence ratio floor 1 - clip_low
    clip_high: float = 4e-4  # sequence ratio ceiling 1 + clip_high
    eps: float = 1e-6  # added to the group std

    def __post_init__(self):
        if not 0.0 <= self.clip_low < 1.0:
            raise OptionError("clip_low", f"must be in [0, 1), got {self.clip_low}")
        if not self.clip_high >= 0.0:
            raise OptionError("clip_high", f"must be >= 0, got {self.clip_high}")
        if not self.eps >= 0.0:
            raise OptionError("eps", f"must be >= 0, got {self.eps}")


def gspo_advantages(inp: AdvantageInput, opts: GSPOOptions) -> AdvantageOutput:
    return AdvantageOutput(grpo_advantages(inp.sequence_rewards(), inp.group_index, eps=opts.eps))


def gspo_loss(inp: PolicyLossInput) -> PolicyLossOutput:
    """Sequence-level clipped loss, averaged over sequences (global count: ``seq_normalizer``)."""
    _validate(inp)
    opts = inp.options if isinstance(inp.options, GSPOOptions) else GSPOOptions()
    mask = inp.mask.to(inp.logp.dtype)
    tokens = mask.sum(-1).clamp(min=1)
    log_ratio = ((inp.logp - inp.old_logp) * mask).sum(-1) / tokens
    ratio = torch.exp(log_ratio.clamp(-20.0, 20.0))  # [B]
    adv = (inp.advantages.to(mask.dtype) * mask).sum(-1) / tokens
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - opts.clip_low, 1.0 + opts.clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    # The sequence's term on each of its tokens, then a per-sequence token mean: exactly pg[i].
    seq_mean = replace(inp, agg_mode="seq-mean-token-mean")
    loss, kl = kl_and_aggregate(pg[:, None].expand_as(mask), mask, seq_mean)
    with torch.no_grad():
        rows = mask.sum(-1) > 0
        names = ["pg_loss", "clipfrac", "ratio_mean", "ratio_max"]
        vals = [pg[rows].mean() if rows.any() else pg.new_zeros(()),
                (pg_clipped > pg_unclipped)[rows].float().mean() if rows.any() else pg.new_zeros(()),
                ratio[rows].mean() if rows.any() else pg.new_ones(()),
                ratio[rows].max() if rows.any() else pg.new_ones(())]
        if kl is not None:
            names.append("kl")
            vals.append(_masked_mean(kl, mask))
        metrics = dict(zip(names, torch.stack([v.detach().float() for v in vals]).tolist()))
    return PolicyLossOutput(loss=loss, metrics=metrics)


GSPO = register_algorithm(Algorithm(
    name="gspo", advantages=gspo_advantages, loss=gspo_loss, options=GSPOOptions,
    zero_advantage_has_zero_loss=True, advantage_weighting_exact=False,
    description="GRPO advantages, length-normalised sequence ratio clipped per sequence",
))
