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
* ``prompt-mean-token-sum`` / ``prompt-mean-token-mean``: each prompt's samples
  averaged (a sample's token sum, or its token mean), then prompts averaged, so a
  prompt weighs the same however many samples an allocator gave it: the M-step of
  GVM-RAFT (arXiv:2505.02391) is ``prompt-mean-token-sum`` of ``-log p``. The
  weights need the prompt of every row, so the driver computes them
  (:func:`prompt_token_weights`) and they arrive as ``token_weight``.

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
    "prompt-mean-token-sum",
    "prompt-mean-token-mean",
)
PROMPT_MODES = ("prompt-mean-token-sum", "prompt-mean-token-mean")

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
    token_weight: Optional[Tensor] = None,
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
        token_weight: ``[B, T]`` weights of the ``prompt-mean-*`` modes
            (:func:`prompt_token_weights`; required there).

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

    if mode in PROMPT_MODES:
        if token_weight is None or token_weight.shape != values.shape:
            raise ValueError(f"{mode} needs token_weight of shape {tuple(values.shape)} (prompt_token_weights)")
        return (masked * token_weight.to(values.dtype)).sum()

    raise ValueError(f"unknown aggregation mode {mode!r}; available: {', '.join(AGG_MODES)}")


def prompt_token_weights(mask: Tensor, prompt_index: Tensor, mode: str) -> Tensor:
    """``[B, T]`` weights that make a token sum the ``prompt-mean-*`` loss of ``mask``'s rows:
    ``1 / (P * n_p)`` on every token of a row of prompt ``p`` (``n_p`` rows with a token, ``P``
    prompts with one), divided by the row's token count for ``prompt-mean-token-mean``."""
    m = mask.to(torch.float64)
    tokens = m.sum(-1)
    live = tokens > 0
    _, prompt = torch.unique(prompt_index, return_inverse=True)
    rows = torch.zeros(int(prompt.max()) + 1 if prompt.numel() else 0, dtype=torch.float64)
    rows = rows.index_add(0, prompt, live.to(torch.float64))
    num_prompts = (rows > 0).sum().clamp(min=1)
    per_row = torch.where(live, 1.0 / (num_prompts * rows[prompt].clamp(min=1)), torch.zeros_like(tokens))
    if mode == "prompt-mean-token-mean":
        per_row = per_row / tokens.clamp(min=1)
    elif mode != "prompt-mean-token-sum":
        raise ValueError(f"not a prompt-mean mode: {mode!r}")
    return (per_row[:, None] * m).to(mask.dtype if mask.is_floating_point() else torch.float32)
