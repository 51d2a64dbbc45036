"""Reward lookup (names, entry points, ``module:function`` / ``file.py:function``) and calling.

A reward function has the signature
``fn(prompt: str, completion: str, ground_truth: str, metadata: dict) -> float | dict``
where a dict return has ``score`` (real number), optional ``correct`` (bool) and any
extra keys, which end up in ``RewardResult.info``. It may be ``async def`` (awaited).
A *batched* reward (``@register_reward(name, batched=True)``, or ``fn.batched = True``) takes
four lists instead and returns a list with one such value per item.

Installed plug-ins expose rewards as entry points in the ``rlcore.rewards`` group
(``[project.entry-points."rlcore.rewards"] my_reward = "pkg.mod:fn"``); a name that is not
registered in this process is looked up there.
"""

from __future__ import annotations

import inspect
import math
import numbers
import threading
from typing import Any, Callable, Sequence, Union

from rewards.schema import RewardError, RewardInput, RewardResult
from rlcore.plugins import PluginError, load_object

RewardFn = Callable[[str, str, str, dict], Union[float, dict]]
RewardSpec = Union[str, RewardFn]

ENTRY_POINT_GROUP = "rlcore.rewards"

_REGISTRY: dict[str, RewardFn] = {}
_ENTRY_POINTS: dict[str, RewardFn] = {}  # names resolved through installed entry points
_LOCK = threading.Lock()
# Modules loaded from ``file.py:function`` specs, keyed by absolute path, so a file is
# executed once per process (re-running it would re-register its rewards).


def register_reward(name: str, batched: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering ``fn`` under ``name``; ``batched=True`` marks a list-in, list-out reward.

    Re-registering the *same* function (same module and qualified name, e.g. after a
    module reload) is allowed; a different function under a taken name raises, because
    silently swapping a reward would change training without anyone noticing.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise RewardError(f"reward name must be a non-empty string without ':', got {name!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise RewardError(f"register_reward({name!r}) expects a callable, got {type(fn).__name__}")
        if batched:
            fn.batched = True
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


def entry_point_rewards() -> list[str]:
    """Sorted names that installed packages expose in the ``rlcore.rewards`` entry-point group."""
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def is_batched(fn: Any) -> bool:
    """True for rewards that take lists (marked by ``register_reward(..., batched=True)``)."""
    return getattr(fn, "batched", False) is True


def from_entry_point(name: str, fn: Any) -> bool:
    """True if ``fn`` is what ``name`` resolved to through an entry point (a worker can do the same)."""
    with _LOCK:
        return _ENTRY_POINTS.get(name) is fn and name not in _REGISTRY


def get_reward(spec: RewardSpec) -> RewardFn:
    """Resolve a reward spec to a callable.

    Accepted specs: a callable (returned as is); a registered name; the name of an entry point in
    the ``rlcore.rewards`` group; ``"pkg.module:function"``; ``"path/to/file.py:function"``
    (relative paths are relative to the current directory).
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
            fn = _load_entry_point(spec)
        if fn is None:
            raise RewardError(
                f"unknown reward {spec!r}; registered rewards: {registered_rewards()}, "
                f"entry points ({ENTRY_POINT_GROUP}): {entry_point_rewards()}"
            )
        return fn
    try:
        fn = load_object(spec, "reward")
    except PluginError as exc:
        raise RewardError(str(exc)) from exc
    attr = spec.rpartition(":")[2]
    if not callable(fn):
        raise RewardError(f"reward spec {spec!r}: {attr!r} is a {type(fn).__name__}, not a callable")
    return fn


def normalize_result(raw: Any, failure_score: float = 0.0) -> RewardResult:
    """Convert a reward's return value into a RewardResult; anything malformed is a failure."""
    if isinstance(raw, RewardResult):
        if raw.failed:  # e.g. a composed reward's failed component: the pool's failure score applies
            return RewardResult.failure(raw.reason or "failed", failure_score)
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


def call_reward(fn: RewardFn, item: RewardInput, failure_score: float = 0.0, loop=None) -> RewardResult:
    """Call a single-item ``fn`` in this process (awaiting it if async), exceptions -> failed results.

    No timeout here: that needs a separate process, see ``RewardPool``. ``loop``: an event loop
    to run async rewards on (a worker keeps one); without it each call uses ``asyncio.run``.
    """
    try:
        raw = resolve_awaitable(fn(item.prompt, item.completion, item.ground_truth, item.reward_metadata()), loop)
    except BaseException as exc:
        return RewardResult.failure(_exception_reason(exc), failure_score)
    return normalize_result(raw, failure_score)


def call_batched(fn: RewardFn, items: Sequence[RewardInput], failure_score: float = 0.0, loop=None,
                 on_fallback: Callable[[], None] | None = None) -> list[RewardResult]:
    """Call a batched ``fn`` once on all ``items``; if that raises or returns the wrong shape, call it
    item by item, so only the item that causes the problem fails. ``on_fallback`` is told first."""
    items = list(items)
    if not items:
        return []
    try:
        raw = resolve_awaitable(
            fn([x.prompt for x in items], [x.completion for x in items], [x.ground_truth for x in items],
               [x.reward_metadata() for x in items]),
            loop,
        )
        error = None
    except BaseException as exc:
        raw, error = None, _exception_reason(exc)
    if error is None:
        if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__") or not hasattr(raw, "__iter__"):
            error = f"bad return type: batched reward returned {type(raw).__name__}, expected a list"
        elif len(raw) != len(items):
            error = f"bad return type: batched reward returned {len(raw)} results for {len(items)} items"
        else:
            return [normalize_result(r, failure_score) for r in raw]
    if len(items) == 1:
        return [RewardResult.failure(error, failure_score)]
    if on_fallback is not None:
        on_fallback()
    return [call_batched(fn, [item], failure_score, loop)[0] for item in items]


def resolve_awaitable(value: Any, loop=None) -> Any:
    """Run ``value`` to completion if it is awaitable (an ``async def`` reward's coroutine)."""
    if not inspect.isawaitable(value):
        return value
    import asyncio  # only async rewards pay for the import

    if loop is not None:
        return loop.run_until_complete(value)

    async def wait():
        return await value

    return asyncio.run(wait())


def _exception_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    if isinstance(exc, SystemExit):  # sys.exit() in user code must not take the worker down silently
        return f"exception: SystemExit: {exc.code}"
    return f"exception: {type(exc).__name__}: {exc}"


def _load_entry_point(name: str) -> RewardFn | None:
    with _LOCK:
        cached = _ENTRY_POINTS.get(name)
    if cached is not None:
        return cached
    from importlib.metadata import entry_points

    found = {ep.value: ep for ep in entry_points(group=ENTRY_POINT_GROUP, name=name)}
    if not found:
        return None
    if len(found) > 1:
        raise RewardError(f"reward {name!r} is provided by several entry points ({ENTRY_POINT_GROUP}): {sorted(found)}")
    (ep,) = found.values()
    try:
        fn = ep.load()
    except Exception as exc:
        raise RewardError(f"cannot load entry point {name} = {ep.value!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise RewardError(f"entry point {name} = {ep.value!r} is a {type(fn).__name__}, not a callable")
    with _LOCK:
        return _ENTRY_POINTS.setdefault(name, fn)


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
