"""RAFT and RAFT++: rejection-sampling fine-tuning on the policy's own samples.

* RAFT (Dong et al., 2023, "RAFT: Reward rAnked FineTuning for Generative
  Foundation Model Alignment", arXiv:2304.06767): keep only the accepted
  (correct) responses and maximise their likelihood -- SFT on filtered
  self-generated data. Advantage 1 for accepted, 0 for rejected, and the
  plain NLL loss; the rejected samples are dropped from the batch
  (``drop_zero_advantage``) so they do not dilute the normaliser.
* RAFT++ (Xiong et al., 2025, "A Minimalist Approach to LLM Reasoning: from
  Rejection Sampling to Reinforce", arXiv:2504.11343): the same positive-only
  signal, but trained with PPO's importance ratio and clipping so that
  several updates per batch stay close to the sampling policy. The paper
  finds it competitive with GRPO; learning only from positives is what
  makes entropy collapse faster.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .nft import positive_mask
from .policy_loss import PolicyLossInput, PolicyLossOutput, _masked_mean, _validate, kl_and_aggregate
from .contract import AdvantageInput, AdvantageOutput, Algorithm, NoOptions
from .policy_loss import clipped_policy_loss
from .registry import register_algorithm


def _check(rewards: Tensor, group_index: Tensor) -> torch.dtype:
    if rewards.dim() != 1 or rewards.shape != group_index.shape:
        raise ValueError(
            f"rewards and group_index must be 1-D of equal length, got "
            f"{tuple(rewards.shape)} and {tuple(group_index.shape)}"
        )
    return rewards.dtype if rewards.dtype.is_floating_point else torch.get_default_dtype()


def raft_advantages(rewards: Tensor, group_index: Tensor, *, correct: Optional[Tensor] = None) -> Tensor:
    """``1.0`` for accepted samples (correct; else ``rewards > 0.5``), ``0.0`` otherwise.

    ``group_index`` is unused: RAFT has no baseline.
    """
    dtype = _check(rewards, group_index)
    return positive_mask(rewards, correct).to(dtype)


def raftpp_advantages(rewards: Tensor, group_index: Tensor, *, correct: Optional[Tensor] = None) -> Tensor:
    """``max(reward, 0)`` for accepted samples, ``0`` for rejected ones.

    With binary rewards this is RAFT's 0/1 signal; a graded reward scales
    the accepted sample's weight but never turns it into a push-down.
    """
    dtype = _check(rewards, group_index)
    r = rewards.to(dtype)
    return torch.where(positive_mask(rewards, correct), r.clamp(min=0.0), torch.zeros_like(r))


def nll_policy_loss(inp: PolicyLossInput) -> PolicyLossOutput:
    """Advantage-weighted likelihood ``-A * logp`` (+ KL loss), aggregated.

    With RAFT's 0/1 advantages and rejected samples dropped this is the
    SFT loss on accepted responses. Needs no ``old_logp``.

    Metrics: ``nll`` (mean ``-logp`` over masked tokens with ``A != 0``),
    ``pg_loss`` (token mean of ``-A * logp``), ``kl`` when used.
    """
    _validate(inp)
    dtype = inp.logp.dtype
    mask = inp.mask.to(dtype)
    adv = inp.advantages.to(dtype)
    # where(), not a product with the mask: padded logp may be -inf.
    pg = torch.where(mask > 0, -adv * inp.logp, torch.zeros_like(adv))

    per_token = pg
    loss, kl = kl_and_aggregate(per_token, mask, inp)

    with torch.no_grad():
        names = ["nll", "pg_loss"]
        vals = [_masked_mean(torch.where(mask > 0, -inp.logp, torch.zeros_like(adv)), mask * (adv != 0).to(dtype)), _masked_mean(pg, mask)]
        if kl is not None:
            names.append("kl")
            vals.append(_masked_mean(kl, mask))
        metrics = dict(zip(names, torch.stack([v.detach().float() for v in vals]).tolist()))
    return PolicyLossOutput(loss=loss, metrics=metrics)


def _raft(inp: AdvantageInput, opts: NoOptions) -> AdvantageOutput:
    return AdvantageOutput(raft_advantages(inp.sequence_rewards(), inp.group_index, correct=inp.correct))


def _raftpp(inp: AdvantageInput, opts: NoOptions) -> AdvantageOutput:
    return AdvantageOutput(raftpp_advantages(inp.sequence_rewards(), inp.group_index, correct=inp.correct))


RAFT = register_algorithm(Algorithm(
    name="raft", advantages=_raft, loss=nll_policy_loss, needs_old_logprobs=False,
    zero_advantage_has_zero_loss=True, drop_zero_advantage=True,
    description="likelihood of the accepted samples (rejection-sampling fine-tuning)",
))
RAFTPP = register_algorithm(Algorithm(
    name="raftpp", advantages=_raftpp, loss=clipped_policy_loss,
    zero_advantage_has_zero_loss=True, drop_zero_advantage=True,
    description="accepted samples only, trained with PPO's ratio and clipping",
))
