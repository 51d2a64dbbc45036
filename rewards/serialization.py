"""How a reward travels to a worker process: as a spec string, or as a cloudpickled callable.

Spawned workers start from a fresh interpreter, so a function defined in ``__main__``, a test
file or a script that registered its own reward name cannot be imported there by reference.
Such callables are pickled *by value* (code + referenced globals) with cloudpickle.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from typing import Any

from rewards.registry import RewardFn, RewardSpec, from_entry_point, get_reward
from rewards.schema import RewardError

Payload = tuple[str, Any]  # ("spec", "module:function") or ("pickle", bytes)

_BY_VALUE_LOCK = threading.Lock()


def make_payload(reward: RewardSpec) -> Payload:
    """Validate ``reward`` in this process and package it for a worker.

    Import-style specs travel as strings (the worker imports them itself, with file paths made
    absolute); registered names from this package and entry-point names travel as names;
    anything else is pickled.
    """
    fn = get_reward(reward)  # raises RewardError early, in the caller's process
    if isinstance(reward, str):
        spec = reward.strip()
        if ":" in spec:
            target, _, attr = spec.rpartition(":")
            if target.endswith(".py") or "/" in target or os.sep in target:
                spec = f"{os.path.abspath(target)}:{attr}"
            return ("spec", spec)
        if _module_root(getattr(fn, "__module__", None)) == "rewards" or from_entry_point(spec, fn):
            return ("spec", spec)  # the worker finds it the same way (installed plug-ins included)
    return ("pickle", dumps_callable(fn))


def load_payload(payload: Payload) -> RewardFn:
    """Inverse of make_payload, run inside the worker."""
    kind, value = payload
    if kind == "spec":
        return get_reward(value)
    if kind == "pickle":
        fn = pickle.loads(value)
        if not callable(fn):
            raise RewardError(f"unpickled reward is a {type(fn).__name__}, not a callable")
        return fn
    raise RewardError(f"unknown reward payload kind {kind!r}")


def dumps_callable(fn: RewardFn) -> bytes:
    """cloudpickle ``fn``, by value for user modules, by reference for stdlib/this package."""
    cp = _cloudpickle()
    modules = [m for m in _candidate_modules(fn) if not _is_library(m.__name__)]
    with _BY_VALUE_LOCK:
        already = set(cp.list_registry_pickle_by_value())
        added = []
        for module in modules:
            if module.__name__ not in already and module.__name__ != "__main__":
                try:
                    cp.register_pickle_by_value(module)
                    added.append(module)
                except (ValueError, TypeError):
                    pass
        try:
            return cp.dumps(fn)
        except Exception as by_value_error:
            for module in added:  # retry by reference, e.g. an unpicklable module global
                cp.unregister_pickle_by_value(module)
            added = []
            try:
                return cp.dumps(fn)
            except Exception as exc:
                raise RewardError(
                    f"cannot serialize reward {fn!r} for a worker process: {type(exc).__name__}: {exc} "
                    f"(by value: {type(by_value_error).__name__}: {by_value_error})"
                ) from exc
        finally:
            for module in added:
                cp.unregister_pickle_by_value(module)


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:
        from ray import cloudpickle  # heavier: importing ray.cloudpickle imports ray
    return cloudpickle


def _candidate_modules(fn: Any) -> list:
    names = {
        getattr(fn, "__module__", None),
        getattr(type(fn), "__module__", None),
        getattr(getattr(fn, "func", None), "__module__", None),  # functools.partial
        getattr(getattr(fn, "__func__", None), "__module__", None),  # bound method
    }
    return [sys.modules[n] for n in names if isinstance(n, str) and n in sys.modules]


def _module_root(name: str | None) -> str:
    return (name or "").split(".")[0]


def _is_library(name: str) -> bool:
    root = _module_root(name)
    return root in sys.stdlib_module_names or root in ("builtins", "rewards", "cloudpickle", "ray")
