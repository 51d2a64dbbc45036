"""Reduce a per-token loss matrix ``[B, T]`` to a scalar.

The choice of normaliser changes the objective, not just its scale:

* ``token-mean``: every token weighs the same (DAPO, Yu et al. 2025,
  arXiv:2503.14476, argue for this so long responses are not under-weighted).
* ``seq-mean-token-mean``: mean per sequence, then mean over sequences
  (original GRPO, arXiv:2402.03300); introduces a length bias.
* ``seq-mean-token-sum``: sum per sequence, mean over sequences.
* ``seq-mean-token-sum-norm``: sum over everything divided by a *constant*
  ``max_tokens * num_seqs`` (Dr. GRPO, arXiv:2503.20783), which removes the
  length bias of per-sequence means.

Why the normaliser arguments exist: the learner splits a mini-batch (one
optimizer step) into micro-batches and across data-parallel ranks and sums
the gradients. A local ``mask.sum()`` would weight micro-batches unequally
(each would be a mean over a different count). Passing the GLOBAL count of
the mini-batch (``token_normalizer`` = total masked tokens,
``seq_normalizer`` = total sequences — for ``seq-mean-token-mean`` the number
of sequences with at least one token) makes every mode linear in the batch,
so the sum of micro-batch losses equals the full-batch loss exactly.
``max_tokens`` must likewise be the same for all micro-batches (e.g. the
configured max response length) since padding lengths may differ.

Zero denominators (e.g. a micro-batch whose mask is all zero) yield a
0 loss that is still attached to the graph, so ``backward()`` works.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)

Number = Union[int, float, Tensor]


def _safe_div(num: Tensor, denom: Tensor) -> Tensor:
    """``num / denom`` where ``denom > 0``, else ``0 * num`` (keeps grad, no NaN)."""
    ok = denom > 0
    return torch.where(ok, num / torch.where(ok, denom, torch.ones_like(denom)), num * 0)


def _as_tensor(x: Number, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    token_normalizer: Optional[Number] = None,
    seq_normalizer: Optional[Number] = None,
    max_tokens: Optional[Number] = None,
) -> Tensor:
    """Aggregate ``values[B, T]`` over tokens where ``mask[B, T]`` is 1.

    Args:
        values: per-token values.
        mask: 1.0 for tokens that count, 0.0 otherwise (bool/int accepted).
        mode: one of :data:`AGG_MODES`.
        token_normalizer: ``token-mean`` denominator (default ``mask.sum()``).
        seq_normalizer: number of sequences for the ``seq-mean-*`` modes
            (default: sequences with any token for ``seq-mean-token-mean``,
            ``B`` for the token-sum modes).
        max_tokens: ``seq-mean-token-sum-norm`` constant (default ``T``).

    Returns:
        A 0-dim tensor.
    """
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(
            f"values and mask must both be [B, T], got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    m = mask.to(values.dtype)
    masked = values * m

    if mode == "token-mean":
        denom = m.sum() if token_normalizer is None else _as_tensor(token_normalizer, values)
        return _safe_div(masked.sum(), denom)

    if mode == "seq-mean-token-mean":
        seq_tokens = m.sum(dim=-1)
        seq_means = _safe_div(masked.sum(dim=-1), seq_tokens)
        if seq_normalizer is None:
            denom = (seq_tokens > 0).to(values.dtype).sum()
        else:
            denom = _as_tensor(seq_normalizer, values)
        return _safe_div(seq_means.sum(), denom)

    if mode == "seq-mean-token-sum":
        denom = _as_tensor(values.shape[0] if seq_normalizer is None else seq_normalizer, values)
        return _safe_div(masked.sum(), denom)

    if mode == "seq-mean-token-sum-norm":
        t = _as_tensor(values.shape[1] if max_tokens is None else max_tokens, values)
        b = _as_tensor(values.shape[0] if seq_normalizer is None else seq_normalizer, values)
        return _safe_div(masked.sum(), t * b)

    raise ValueError(f"unknown aggregation mode {mode!r}; available: {', '.join(AGG_MODES)}")
