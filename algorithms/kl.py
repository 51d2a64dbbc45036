"""Per-token KL estimators between the policy and a reference policy.

From J. Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html). With samples drawn from the policy
and ``log r = ref_logp - logp``:

* ``k1 = -log r = logp - ref_logp``: unbiased, high variance, can be negative.
* ``k2 = 0.5 * (log r)^2``: biased, low variance, always >= 0.
* ``k3 = (r - 1) - log r``: unbiased, low variance, always >= 0. Used by GRPO
  (DeepSeekMath, arXiv:2402.03300) as the KL loss; verl calls it
  ``low_var_kl``. As in verl we clamp ``log r`` to [-20, 20] (exp overflow)
  and the estimate to [-10, 10] (a few outlier tokens must not dominate).
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Element-wise KL(policy || ref) estimate, same shape as ``logp``."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp).square()
    if kind == "k3":
        log_r = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(log_r) - log_r - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; available: {', '.join(KL_ESTIMATORS)}")


def kl_penalty(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, coef: float, estimator: str = "k1"
) -> Tensor:
    """Per-token KL penalty ``coef * kl_estimate * mask`` for KL-in-reward.

    The alternative to a KL *loss*: InstructGPT-style PPO (Ouyang et al.,
    2022, arXiv:2203.02155; Ziegler et al., 2019, arXiv:1909.08593) subtracts
    the penalty from the token reward, ``r_t - penalty_t``. ``k1`` is the
    usual choice there since the summed reward then estimates the sequence
    KL without bias. The result is a reward, so it is detached.
    """
    if logp.shape != ref_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            f"logp, ref_logp and mask must share a shape, got {tuple(logp.shape)}, "
            f"{tuple(ref_logp.shape)}, {tuple(mask.shape)}"
        )
    with torch.no_grad():
        return coef * kl_estimate(logp, ref_logp, estimator) * mask.to(logp.dtype)
