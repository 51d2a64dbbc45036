"""Group-relative outcome advantages (GRPO, Dr. GRPO).

GRPO (Shao et al., 2024, "DeepSeekMath", arXiv:2402.03300) samples a group of
responses per prompt and uses the group as its own baseline:
``A_i = (R_i - mean_g) / (std_g + eps)``, removing the need for a critic.
Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training: A Critical
Perspective", arXiv:2503.20783) drops the std division, which otherwise
up-weights prompts whose rewards barely vary (too easy / too hard).

Conventions:
* ``std`` is by default the *unbiased* (Bessel-corrected, ``n - 1``)
  standard deviation, matching verl's ``compute_grpo_outcome_advantage``
  which calls ``torch.std`` with its default ``unbiased=True``;
  ``unbiased_std=False`` gives the population std (``n``), under which GRPO
  is exactly NFT's on-policy limit (see :mod:`algorithms.nft`).
* Groups of size 1 get advantage 0: a lone sample has no baseline to compare
  against, so it carries no learning signal. (verl instead uses mean 0 / std 1
  there, i.e. advantage = raw reward; we deliberately do not.)
* A constant group (all rewards equal) gets *exactly* 0, even when the float
  mean is not exactly representable (otherwise ``1e-9 / eps`` noise leaks in).
* Groups are identified by arbitrary integer ids; they need not be contiguous,
  sorted, or equal-sized. Everything is vectorised with scatter ops.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def _group_stats(
    rewards: Tensor, group_index: Tensor, unbiased: bool = True
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample (group mean, group std, group size, group is constant).

    The std is Bessel-corrected (``n - 1``) if ``unbiased`` else population (``n``).
    """
    if rewards.dim() != 1 or group_index.dim() != 1 or rewards.shape != group_index.shape:
        raise ValueError(
            f"rewards and group_index must be 1-D of equal length, got "
            f"{tuple(rewards.shape)} and {tuple(group_index.shape)}"
        )
    if group_index.dtype.is_floating_point or group_index.dtype == torch.bool:
        raise TypeError(f"group_index must be an integer tensor, got {group_index.dtype}")
    uniq, inv = torch.unique(group_index, return_inverse=True)
    n_groups = uniq.numel()
    zeros = rewards.new_zeros(n_groups)

    count = zeros.index_add(0, inv, torch.ones_like(rewards))
    mean = zeros.index_add(0, inv, rewards) / count
    dev = rewards - mean[inv]
    sq = zeros.index_add(0, inv, dev * dev)
    var = sq / ((count - 1).clamp(min=1) if unbiased else count)
    std = var.sqrt()

    gmax = zeros.scatter_reduce(0, inv, rewards, reduce="amax", include_self=False)
    gmin = zeros.scatter_reduce(0, inv, rewards, reduce="amin", include_self=False)
    constant = gmax == gmin
    return mean[inv], std[inv], count[inv], constant[inv]


def grpo_advantages(
    rewards: Tensor,
    group_index: Tensor,
    *,
    eps: float = 1e-6,
    norm_by_std: bool = True,
    unbiased_std: bool = True,
) -> Tensor:
    """GRPO outcome advantage ``(R - mean_group) / (std_group + eps)``.

    Args:
        rewards: ``[B]`` scalar reward per response.
        group_index: ``[B]`` integer id of the prompt group of each response.
        eps: added to the std so that near-constant groups stay finite.
        norm_by_std: if False, return ``R - mean_group`` (Dr. GRPO).
        unbiased_std: Bessel-corrected std (default, as verl); False uses
            the population std.

    Returns:
        ``[B]`` advantages in ``rewards``' floating dtype (ints promote to
        the default float dtype). Size-1 and constant groups give 0.
    """
    if not rewards.dtype.is_floating_point:
        rewards = rewards.to(torch.get_default_dtype())
    if rewards.numel() == 0:
        return rewards.clone()
    mean, std, count, constant = _group_stats(rewards, group_index, unbiased_std)
    adv = rewards - mean
    if norm_by_std:
        adv = adv / (std + eps)
    return torch.where((count > 1) & ~constant, adv, torch.zeros_like(adv))
