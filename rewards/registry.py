"""Reward lookup: names, ``module:function`` / ``file.py:function`` specs, and return normalisation.

A reward function has the signature
``fn(prompt: str, completion: str, ground_truth: str, metadata: dict) -> float | dict``
where a dict return has ``score`` (real number), optional ``correct`` (bool) and any
extra keys, which end up in ``RewardResult.info``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import sys
import threading
from typing import Any, Callable, Union

from rewards.schema import RewardError, RewardInput, RewardResult

RewardFn = Callable[[str, str, str, dict], Union[float, dict]]
RewardSpec = Union[str, RewardFn]

_REGISTRY: dict[str, RewardFn] = {}
_LOCK = threading.Lock()
# Modules loaded from ``file.py:function`` specs, keyed by absolute path, so a file is
# executed once per process (re-running it would re-register its rewards).
_FILE_MODULES: dict[str, Any] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering ``fn`` under ``name``.

    Re-registering the *same* function (same module and qualified name, e.g. after a
    module reload) is allowed; a different function under a taken name raises, because
    silently swapping a reward would change training without anyone noticing.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise RewardError(f"reward name must be a non-empty string without ':', got {name!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise RewardError(f"register_reward({name!r}) expects a callable, got {type(fn).__name__}")
        with _LOCK:
            existing = _REGISTRY.get(name)
            if existing is not None and existing is not fn and _identity(existing) != _identity(fn):
                raise RewardError(
                    f"reward {name!r} is already registered to {_identity(existing)}; "
                    f"refusing to re-register it to {_identity(fn)}"
                )
            _REGISTRY[name] = fn
        return fn

    return decorator


def registered_rewards() -> list[str]:
    """Sorted names of all registered rewards (for error messages and CLIs)."""
    with _LOCK:
        return sorted(_REGISTRY)


def get_reward(spec: RewardSpec) -> RewardFn:
    """Resolve a reward spec to a callable.

    Accepted specs: a callable (returned as is); a registered name; ``"pkg.module:function"``;
    ``"path/to/file.py:function"`` (relative paths are relative to the current directory).
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"reward spec must be a name, 'module:function', 'file.py:function' or a callable; got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        with _LOCK:
            fn = _REGISTRY.get(spec)
        if fn is None:
            raise RewardError(f"unknown reward {spec!r}; registered rewards: {registered_rewards()}")
        return fn
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RewardError(f"bad reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    if _looks_like_file(target):
        module = _load_file_module(target, spec)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # ImportError, or any error raised while importing user code
            raise RewardError(f"cannot import module {target!r} for reward spec {spec!r}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise RewardError(f"reward spec {spec!r}: {target!r} has no attribute {attr!r}")
    if not callable(fn):
        raise RewardError(f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not a callable")
    return fn


def normalize_result(raw: Any, failure_score: float = 0.0) -> RewardResult:
    """Convert a reward's return value into a RewardResult; anything malformed is a failure."""
    if isinstance(raw, RewardResult):
        return raw if _finite(raw.score) else RewardResult.failure(f"non-finite score: {raw.score}", failure_score)
    if isinstance(raw, dict):
        if "score" not in raw:
            return RewardResult.failure(f"bad return type: dict without 'score' (keys: {sorted(map(str, raw))})", failure_score)
        score = raw["score"]
        correct = raw.get("correct")
        info = {k: v for k, v in raw.items() if k not in ("score", "correct")}
    else:
        score, correct, info = raw, None, {}
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        return RewardResult.failure(f"bad return type: score is {type(score).__name__}, expected float", failure_score)
    score = float(score)
    if not math.isfinite(score):
        return RewardResult.failure(f"non-finite score: {score}", failure_score)
    if correct is not None:
        correct = _as_bool(correct)
        if correct is None:
            return RewardResult.failure(f"bad return type: 'correct' is {type(raw['correct']).__name__}, expected bool", failure_score)
    return RewardResult(score=score, correct=correct, info=info)


def call_reward(fn: RewardFn, item: RewardInput, failure_score: float = 0.0) -> RewardResult:
    """Call ``fn`` on one item in this process, turning exceptions into failed results.

    No timeout here: that needs a separate process, see ``RewardPool``.
    """
    try:
        raw = fn(item.prompt, item.completion, item.ground_truth, item.metadata)
    except Exception as exc:
        return RewardResult.failure(f"exception: {type(exc).__name__}: {exc}", failure_score)
    except SystemExit as exc:  # sys.exit() in user code must not take the worker down silently
        return RewardResult.failure(f"exception: SystemExit: {exc.code}", failure_score)
    return normalize_result(raw, failure_score)


def _identity(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy bool, without importing numpy
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    return None


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _load_file_module(path: str, spec: str) -> Any:
    abspath = os.path.abspath(path)
    with _LOCK:
        cached = _FILE_MODULES.get(abspath)
    if cached is not None:
        return cached
    if not os.path.isfile(abspath):
        raise RewardError(f"reward spec {spec!r}: file not found: {abspath}")
    stem = os.path.splitext(os.path.basename(abspath))[0]
    digest = hashlib.sha1(abspath.encode()).hexdigest()[:10]
    mod_name = f"_reward_file_{stem}_{digest}"
    mod_spec = importlib.util.spec_from_file_location(mod_name, abspath)
    if mod_spec is None or mod_spec.loader is None:
        raise RewardError(f"reward spec {spec!r}: cannot load {abspath} as a Python module")
    module = importlib.util.module_from_spec(mod_spec)
    # Registered before exec (as importlib's recipe does) so dataclasses/pickling inside it work.
    sys.modules[mod_name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise RewardError(f"reward spec {spec!r}: error executing {abspath}: {type(exc).__name__}: {exc}") from exc
    with _LOCK:
        _FILE_MODULES[abspath] = module
    return module
