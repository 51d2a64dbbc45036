"""RL algorithms: one file each, bundled as an :class:`Algorithm` (algorithms/contract.py) and
registered by name; out-of-tree ones are named by import path instead.

Importing this package imports every module in it, so a new algorithm file registers its name
without an edit anywhere else.
Depends only on torch and the standard library (and rlcore/plugins.py, stdlib only).
"""

from .contract import AdvantageInput, AdvantageOutput, Algorithm, NoOptions, OptionError
from .policy_loss import PolicyLossInput, PolicyLossOutput, clipped_policy_loss, kl_and_aggregate
from .registry import get_algorithm, list_algorithms, register_algorithm
from .aggregation import AGG_MODES, aggregate
from .kl import KL_ESTIMATORS, kl_estimate, kl_penalty
from .advantages import grpo_advantages

import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AGG_MODES",
    "KL_ESTIMATORS",
    "AdvantageInput",
    "AdvantageOutput",
    "Algorithm",
    "NoOptions",
    "OptionError",
    "PolicyLossInput",
    "PolicyLossOutput",
    "aggregate",
    "clipped_policy_loss",
    "get_algorithm",
    "grpo_advantages",
    "kl_and_aggregate",
    "kl_estimate",
    "kl_penalty",
    "list_algorithms",
    "register_algorithm",
]
