"""Reward functions for RL post-training, and a process pool that scores them safely.

Importing the package registers the built-in rewards (``math_answer``, ``math_answer_auto``,
``gsm8k_answer``; the verifier behind them is ``rewards.math``). This package
must stay free of torch, model, rollout and algorithm imports: it runs inside lightweight
worker processes whose start-up time is paid on every worker replacement.
"""

from rewards.schema import RewardError, RewardInput, RewardResult
from rewards.registry import get_reward, register_reward
from rewards import math_answer as _builtin_math_answer  # noqa: F401  (registers "math_answer")
from rewards.pool import RewardPool

__all__ = [
    "register_reward",
    "get_reward",
    "RewardInput",
    "RewardResult",
    "RewardPool",
    "RewardError",
]

# Custom rewards: composition from the config (not in __all__, which test_rewards pins).
from rewards.compose import ComposedReward, reward_from_config  # also registers format_boxed, format_regex
from rewards import code as _builtin_code  # noqa: E402,F401  (registers "code_tests"; sandbox starts lazily)
