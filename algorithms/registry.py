"""Algorithms by registered name or by import path.

An RL algorithm for reasoning LLMs is mostly a choice of advantage estimator and policy loss
plus what must exist around them (a critic, old log-probs); :class:`algorithms.contract.Algorithm`
bundles exactly that, and the trainer stays algorithm-agnostic by reading only its flags. The
built-in ones register themselves under a short name; anything else is named by import path
(``module:ATTR`` or ``path/to/file.py:ATTR``) and needs no edit here.
"""
from __future__ import annotations

from typing import Dict, List

from rlcore.plugins import resolve

from .contract import Algorithm

_ALGORITHMS: Dict[str, Algorithm] = {}


def register_algorithm(algorithm: Algorithm) -> Algorithm:
    """Make `algorithm` available as ``algorithm.name: <its name>``; returns it."""
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"register_algorithm takes an Algorithm, got {type(algorithm).__name__}")
    old = _ALGORITHMS.get(algorithm.name)
    if old is not None and old is not algorithm and _identity(old) != _identity(algorithm):
        raise ValueError(f"algorithm {algorithm.name!r} is already registered ({_identity(old)}); "
                         f"refusing to overwrite it with {_identity(algorithm)}")
    _ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """A registered name, or ``module:ATTR`` / ``path/to/file.py:ATTR`` naming an Algorithm.
    Raises KeyError (unknown name) or PluginError (bad path) with what is available."""
    return resolve(name, _ALGORITHMS, "algorithm", lambda found: isinstance(found, Algorithm),
                   "an algorithms.contract.Algorithm")


def list_algorithms() -> List[str]:
    return sorted(_ALGORITHMS)


def _identity(algorithm: Algorithm) -> str:
    return f"{algorithm.loss.__module__}.{algorithm.loss.__qualname__}"
