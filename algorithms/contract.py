"""The algorithm plug-in contract: typed inputs and outputs, and one object per algorithm.

An algorithm is one file that defines

* an options dataclass (its own settings, `algorithm.options:` in the YAML, checked at config
  load: unknown keys, wrong types, and the ranges its ``__post_init__`` rejects with
  :class:`OptionError`, each reported with the key, file and line),
* ``advantages(AdvantageInput, options) -> AdvantageOutput`` (runs on the driver),
* ``loss(PolicyLossInput) -> PolicyLossOutput`` (runs in the learners; ``inp.options`` is the
  typed options object),

and bundles them in an :class:`Algorithm`. The config names it by registered name or by import
path (``module:ATTR``, ``path/to/file.py:ATTR``); the driver and every learner resolve that
name themselves (rlcore/plugins.py), so only the name and the options' plain values (the
config's wire form) cross process boundaries, never the code.

The framework owns everything around these two functions: sampling, the KL reference and its
penalty (``algorithm.kl_coef``, ``kl_mode``), old log-probs, critic values, aggregation,
off-policy weights, micro-batching. It reads only the flags below, never the algorithm's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from torch import Tensor

from rlcore.plugins import OptionError  # noqa: F401 (part of the contract: algorithms.OptionError)

from .policy_loss import PolicyLossInput, PolicyLossOutput


@dataclass(frozen=True)
class NoOptions:
    """For algorithms without settings of their own."""


@dataclass
class AdvantageInput:
    """One step's samples, as the driver scored them. ``B`` samples, ``T`` completion tokens.

    ``rewards`` are the reward functions' scores. ``token_penalty`` is the per-token KL penalty
    ``kl_coef * KL(pi_old || ref)`` with ``algorithm.kl_mode: reward`` (zeros otherwise);
    sequence-level estimators subtract its row sum (:meth:`sequence_rewards`), token-level ones
    put it in the per-token reward (:meth:`token_rewards`). ``values`` are the critic's, for an
    algorithm with ``needs_critic``.
    """

    rewards: Tensor  # [B] float
    group_index: Tensor  # [B] int: samples of the same prompt share an id
    correct: Tensor  # [B] bool: the verifier's verdicts (rlcore.sampling.is_accepted)
    mask: Tensor  # [B, T] float: 1 on tokens the policy generated (not tool output, not padding)
    token_penalty: Tensor  # [B, T] float
    values: Optional[Tensor] = None  # [B, T] float

    def sequence_rewards(self) -> Tensor:
        """``[B]``: the score minus the sequence's summed KL penalty."""
        return _floating(self.rewards) - self.token_penalty.sum(-1)

    def token_rewards(self) -> Tensor:
        """``[B, T]``: the score on each row's last policy token, minus the per-token penalty."""
        from .ppo import outcome_token_rewards

        return outcome_token_rewards(_floating(self.rewards), self.mask) - self.token_penalty


@dataclass
class AdvantageOutput:
    """``advantages``: ``[B]`` (one per sequence, spread over its tokens) or ``[B, T]`` (per
    token). ``returns``: ``[B, T]`` value targets, for an algorithm with a critic. ``extras``:
    ``[B]`` or ``[B, T]`` tensors that reach the loss as ``PolicyLossInput.extras``."""

    advantages: Tensor
    returns: Optional[Tensor] = None
    extras: Dict[str, Tensor] = field(default_factory=dict)

    def token_advantages(self, mask: Tensor) -> Tensor:
        """``[B, T]`` advantages, zero off the policy tokens."""
        return spread(self.advantages, mask)

    def sequence_advantages(self, mask: Tensor) -> Tensor:
        """``[B]``: per-sequence advantages, or the token mean of per-token ones (for metrics
        and for ``drop_zero_advantage``)."""
        adv = _floating(self.advantages)
        if adv.dim() == 1:
            return adv
        return (adv * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _floating(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


AdvantageFn = Callable[[AdvantageInput, Any], AdvantageOutput]
LossFn = Callable[[PolicyLossInput], PolicyLossOutput]


@dataclass(frozen=True)
class Algorithm:
    """One RL algorithm. The flags say what the framework must prepare for it.

    needs_old_logprobs: the loss reads ``old_logp`` (an importance ratio). With one optimiser
        pass per batch it equals the training forward's own log-probs, so nothing extra runs.
    needs_critic: build and train a value model; ``AdvantageInput.values`` is set and the
        advantage function must return ``returns``.
    drop_zero_advantage: samples whose (sequence) advantage is exactly 0 leave the batch, so
        they neither cost compute nor count in the normalisers (rejection sampling).
    zero_advantage_has_zero_loss: a token with advantage exactly 0 has exactly zero loss and
        gradient (apart from a KL loss term): the learner skips rows whose advantages are all 0;
        unlike ``drop_zero_advantage`` they still count in the normalisers.
    advantage_weighting_exact: the loss scales with a positive per-token weight on the
        advantage exactly as if the token's loss were weighted (PPO clip, ``-A log p``):
        asynchronous rollout applies its importance weights that way.
    """

    name: str
    advantages: AdvantageFn
    loss: LossFn
    options: type = NoOptions
    needs_old_logprobs: bool = True
    needs_critic: bool = False
    drop_zero_advantage: bool = False
    zero_advantage_has_zero_loss: bool = False
    advantage_weighting_exact: bool = True
    description: str = ""


def spread(values: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` -> ``[B, T]`` over the policy tokens (extras and advantages)."""
    if values.dim() not in (1, 2) or mask.dim() != 2 or values.shape[0] != mask.shape[0]:
        raise ValueError(f"expected [B] or [B, T] values and a [B, T] mask, got {tuple(values.shape)}, "
                         f"{tuple(mask.shape)}")
    v = _floating(values)
    return (v[:, None] if v.dim() == 1 else v) * mask.to(v.dtype)

