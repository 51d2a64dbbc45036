"""Name -> function registries for advantages, policy losses and algorithms.

Why registries instead of trainer subclasses: an RL "algorithm" for reasoning
LLMs is mostly a choice of (advantage estimator, policy loss, which models must
exist). Keeping each piece a pure, named function (as verl's
``register_adv_est`` / ``register_policy_loss`` decorators do) lets configs pick
them by string and lets the trainer stay algorithm-agnostic: it asks the
registered algorithm for an :class:`AlgorithmSpec` and builds only what that
spec declares (reference model, critic, old-logprob recomputation).

This module is pure Python: no torch, ray, vllm or transformers imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Protocol, TypeVar, runtime_checkable

F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class AlgorithmConfigLike(Protocol):
    """Duck type for the algorithm section of the run config.

    The real config class lives outside this package; anything exposing these
    attributes works (a dataclass, a SimpleNamespace, an OmegaConf node).
    Algorithm functions should read optional fields with ``getattr`` defaults.
    """

    kl_coef: float


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the trainer must build/compute for an algorithm.

    Attributes:
        name: registered algorithm name.
        advantage: name of a function in the advantage registry.
        policy_loss: name of a function in the policy-loss registry.
        needs_reference: build a frozen reference policy and compute
            ``ref_logp`` (for a KL penalty).
        needs_critic: build and train a value model.
        needs_old_logprobs: recompute behaviour-policy log-probs with the
            trainer (for the importance ratio of PPO-style clipping).
        drop_zero_advantage: drop samples whose advantage is exactly 0 from
            the update (rejection sampling: RAFT, RAFT++; NFT's uninformative
            groups), so they neither cost compute nor dilute the normalisers.
        zero_advantage_has_zero_loss: the policy loss of a token whose
            advantage is exactly 0 is exactly 0, with zero gradient, apart
            from a KL loss term (PPO clip, dual clip, ``-A log p``). Without
            a KL loss the learner then skips the forward/backward of rows
            whose advantages are all zero; unlike ``drop_zero_advantage``
            they still count in the normalisers, so the loss is unchanged.
    """

    name: str
    advantage: str
    policy_loss: str
    needs_reference: bool
    needs_critic: bool
    needs_old_logprobs: bool
    drop_zero_advantage: bool = False
    zero_advantage_has_zero_loss: bool = False
    # The loss scales with a positive per-token weight on the advantage exactly as if the token's
    # loss were weighted (PPO clip, dual clip, -A log p): asynchronous rollout applies its
    # importance weights that way (algorithms/off_policy.py).
    advantage_weighting_exact: bool = True


class _Registry:
    """A small name -> callable map with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def deco(fn: F) -> F:
            old = self._fns.get(name)
            if old is not None and old is not fn and not _same_definition(old, fn):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to "
                    f"{old.__module__}.{old.__qualname__}; refusing to overwrite with "
                    f"{fn.__module__}.{fn.__qualname__}"
                )
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._fns[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none)'}"
            ) from None

    def names(self) -> List[str]:
        return sorted(self._fns)


def _same_definition(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    # Re-registering the "same" function after importlib.reload yields a new
    # object with the same module and qualified name; treat that as benign.
    return (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )


_ADVANTAGES = _Registry("advantage")
_POLICY_LOSSES = _Registry("policy loss")
_ALGORITHMS = _Registry("algorithm")


def register_advantage(name: str) -> Callable[[F], F]:
    """Register ``fn(rewards[B], group_index[B], **opts) -> advantages[B] | dict``.

    Options are passed only if the function's signature names them: ``eps``,
    ``correct`` (bool ``[B]``, the verifier's verdicts) and any field of the
    algorithm config. A dict return must hold ``"advantages"``; its other
    ``[B]`` entries are broadcast over tokens and reach the policy loss as
    ``PolicyLossInput.extras``.
    """
    return _ADVANTAGES.register(name)


def register_policy_loss(name: str) -> Callable[[F], F]:
    """Register ``fn(PolicyLossInput) -> PolicyLossOutput``."""
    return _POLICY_LOSSES.register(name)


def register_algorithm(name: str) -> Callable[[F], F]:
    """Register ``fn(cfg: AlgorithmConfigLike) -> AlgorithmSpec``."""
    return _ALGORITHMS.register(name)


def get_advantage(name: str) -> Callable[..., Any]:
    return _ADVANTAGES.get(name)


def get_policy_loss(name: str) -> Callable[..., Any]:
    return _POLICY_LOSSES.get(name)


def get_algorithm(name: str) -> Callable[[Any], AlgorithmSpec]:
    return _ALGORITHMS.get(name)


def list_advantages() -> List[str]:
    return _ADVANTAGES.names()


def list_policy_losses() -> List[str]:
    return _POLICY_LOSSES.names()


def list_algorithms() -> List[str]:
    return _ALGORITHMS.names()
