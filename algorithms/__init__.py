"""Pure-tensor RL algorithm pieces: advantages, KL estimators, aggregation,
policy losses and algorithm specs, each registered by name.

Importing this package imports every module so all registrations happen.
Depends only on torch and the standard library.
"""

from .registry import (
    AlgorithmConfigLike,
    AlgorithmSpec,
    get_advantage,
    get_algorithm,
    get_policy_loss,
    list_advantages,
    list_algorithms,
    list_policy_losses,
    register_advantage,
    register_algorithm,
    register_policy_loss,
)
from .advantages import broadcast_to_tokens, drgrpo_advantages, grpo_advantages
from .kl import KL_ESTIMATORS, kl_estimate, kl_penalty, penalized_scores
from .aggregation import AGG_MODES, aggregate
from .policy_loss import PolicyLossInput, PolicyLossOutput, clipped_policy_loss
from . import grpo as _grpo  # noqa: F401  (registers "grpo", "drgrpo" algorithms)
from .nft import NFT_WEIGHT_MODES, nft_advantages, nft_policy_loss
from .raft import nll_policy_loss, raft_advantages, raftpp_advantages
from .ppo import gae_advantages, outcome_token_rewards, value_loss, whiten

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "NFT_WEIGHT_MODES",
    "AlgorithmConfigLike",
    "AlgorithmSpec",
    "PolicyLossInput",
    "PolicyLossOutput",
    "aggregate",
    "broadcast_to_tokens",
    "clipped_policy_loss",
    "drgrpo_advantages",
    "gae_advantages",
    "get_advantage",
    "get_algorithm",
    "get_policy_loss",
    "grpo_advantages",
    "kl_estimate",
    "kl_penalty",
    "list_advantages",
    "list_algorithms",
    "list_policy_losses",
    "nft_advantages",
    "nft_policy_loss",
    "nll_policy_loss",
    "outcome_token_rewards",
    "penalized_scores",
    "raft_advantages",
    "raftpp_advantages",
    "register_advantage",
    "register_algorithm",
    "register_policy_loss",
    "value_loss",
    "whiten",
]
