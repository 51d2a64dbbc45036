"""Composed rewards: a weighted sum of rewards plus length shaping, as one picklable reward.

The composition is built from the config in the driver, validated there (every component is
resolved), and pickled to the reward workers as a small spec: each component travels the way
a lone reward would (a name or import spec, or a cloudpickled callable) and is loaded in the
worker on first use. Shaping needs token counts, which the trainer passes in
``RewardInput.num_tokens`` / ``max_tokens`` (rewards see them in ``metadata``).

Also registers two format rewards: ``format_boxed`` and ``format_regex``.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from rewards.registry import RewardSpec, get_reward, is_batched, normalize_result, register_reward, resolve_awaitable
from rewards.schema import RewardError, RewardResult
from rewards.serialization import load_payload, make_payload


@dataclass(frozen=True)
class Component:
    """One term of a composed reward: ``weight * fn(...)``; ``args`` are extra keyword arguments."""

    fn: RewardSpec
    weight: float = 1.0
    name: str = ""  # key in RewardResult.info ("score/<name>"); default: the spec or function name
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Overlong:
    """DAPO's soft overlong punishment (arXiv:2503.14476, eq. 13), in tokens.

    0 up to ``max_tokens - cache_tokens``, then falling linearly to -1 at ``max_tokens``, and -1
    beyond. ``max_tokens = 0`` means the generation limit the sample was drawn with.
    """

    cache_tokens: int
    max_tokens: int = 0
    weight: float = 1.0

    def __call__(self, num_tokens: int, generation_limit: int | None) -> float:
        l_max = self.max_tokens or generation_limit
        if not l_max:
            raise RewardError("overlong shaping needs max_tokens (or RewardInput.max_tokens)")
        if num_tokens <= l_max - self.cache_tokens:
            return 0.0
        if num_tokens <= l_max:
            return (l_max - self.cache_tokens - num_tokens) / self.cache_tokens
        return -1.0


@dataclass(frozen=True)
class LengthPenalty:
    """``-coef * max(0, num_tokens - target_tokens)``: a per-token cost above a free length."""

    coef: float
    target_tokens: int = 0

    def __call__(self, num_tokens: int) -> float:
        return -self.coef * max(0, num_tokens - self.target_tokens)


class ComposedReward:
    """``sum_k w_k r_k + w_o overlong(n) + length_penalty(n)``; ``correct`` is the first component's.

    Called like a single-item reward, or like a batched one (lists in, list out) when any
    component is batched. Returns a coroutine when any component is async (the worker awaits
    it; within one batched call, async single-item components run concurrently).
    """

    def __init__(self, components: Sequence[Component], overlong: Overlong | None = None,
                 length_penalty: LengthPenalty | None = None) -> None:
        if not components:
            raise RewardError("a composed reward needs at least one component")
        names: list[str] = []
        for c in components:
            if not isinstance(c.weight, (int, float)) or isinstance(c.weight, bool) or not math.isfinite(c.weight):
                raise RewardError(f"reward component {c.fn!r}: weight must be a finite number, got {c.weight!r}")
            base = c.name or (c.fn if isinstance(c.fn, str) else getattr(c.fn, "__name__", "reward"))
            name, k = base, 2
            while name in names:
                name, k = f"{base}_{k}", k + 1
            names.append(name)
        fns = [get_reward(c.fn) for c in components]  # a bad spec fails here, in the driver
        for name, c, fn in zip(names, components, fns):
            _check_args(name, fn, c.args)
        self.names = names
        self.weights = [float(c.weight) for c in components]
        self.args = [dict(c.args) for c in components]
        self.overlong = overlong
        self.length_penalty = length_penalty
        self.batched = any(is_batched(f) for f in fns)
        self._async = [_is_async(f) for f in fns]
        self._payloads = [make_payload(c.fn) for c in components]  # how each travels to a worker
        self._fns: list | None = fns

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fns"] = None  # loaded from the payloads in the worker
        return state

    def __repr__(self) -> str:
        terms = " + ".join(f"{w:g}*{n}" for w, n in zip(self.weights, self.names))
        return f"ComposedReward({terms}, overlong={self.overlong}, length_penalty={self.length_penalty})"

    def __call__(self, prompt, completion, ground_truth, metadata):
        if self._fns is None:
            self._fns = [load_payload(p) for p in self._payloads]
        if self.batched:
            columns = (list(prompt), list(completion), list(ground_truth), list(metadata))
        else:
            columns = ([prompt], [completion], [ground_truth], [metadata])
        coro = self._score(columns)
        if any(self._async):
            return coro if self.batched else _first(coro)
        results = _run_sync(coro)
        return results if self.batched else results[0]

    async def _score(self, columns) -> list[RewardResult]:
        """Every component on every item, then the sum. Written once as a coroutine; when no
        component is async nothing in it awaits, so ``_run_sync`` runs it without a loop."""
        per_component = []
        for fn, args, is_async in zip(self._fns, self.args, self._async):
            if is_batched(fn):
                raw = fn(*columns, **args)
                raw = await raw if inspect.isawaitable(raw) else raw
                if isinstance(raw, (str, bytes, dict)) or len(raw) != len(columns[0]):
                    raise RewardError(f"batched component returned {type(raw).__name__} of the wrong length")
                per_component.append([normalize_result(r) for r in raw])
            elif is_async:
                import asyncio

                per_component.append(list(await asyncio.gather(*(_one_async(fn, row, args) for row in zip(*columns)))))
            else:
                per_component.append([_one_sync(fn, row, args) for row in zip(*columns)])
        return [self._combine([rs[j] for rs in per_component], columns[3][j]) for j in range(len(columns[0]))]

    def _combine(self, parts: list[RewardResult], metadata: dict) -> RewardResult:
        for name, part in zip(self.names, parts):
            if part.failed:
                return RewardResult.failure(f"{part.reason} (component {name})")
        primary = parts[0]
        info = dict(primary.info)
        info.update({f"score/{n}": p.score for n, p in zip(self.names, parts)})
        score = sum(w * p.score for w, p in zip(self.weights, parts))
        if self.overlong is not None or self.length_penalty is not None:
            num_tokens = (metadata or {}).get("num_tokens")
            if num_tokens is None:
                return RewardResult.failure("exception: RewardError: length shaping needs RewardInput.num_tokens")
            if self.overlong is not None:
                info["overlong"] = self.overlong(int(num_tokens), metadata.get("max_tokens"))
                score += self.overlong.weight * info["overlong"]
            if self.length_penalty is not None:
                info["length_penalty"] = self.length_penalty(int(num_tokens))
                score += info["length_penalty"]
        correct = primary.correct if primary.correct is not None else primary.score > 0.5
        return RewardResult(score=float(score), correct=correct, info=info)


def reward_from_config(cfg: Any, override: RewardSpec | None = None) -> RewardSpec:
    """The reward a RewardPool runs, from a RewardConfig (duck-typed: no rlcore import here).

    Imports ``cfg.imports`` (modules that register rewards), then returns ``cfg.fn`` (or
    ``override``, a callable passed to ``rlcore.train``) as is when nothing is composed, else a
    ComposedReward. Every spec is resolved here, so a typo fails before any worker starts.
    """
    import importlib

    for module in cfg.imports:
        importlib.import_module(module)
    if override is not None and cfg.components:
        raise RewardError("a reward passed in code replaces reward.fn; it cannot be combined with reward.components "
                          "(list it as a component instead)")
    base = override if override is not None else cfg.fn
    overlong = cfg.overlong and Overlong(cache_tokens=cfg.overlong.cache_tokens, max_tokens=cfg.overlong.max_tokens,
                                         weight=cfg.overlong.weight)
    lp = cfg.length_penalty
    penalty = LengthPenalty(lp.coef, lp.target_tokens) if lp is not None and lp.coef != 0 else None
    if not cfg.components and overlong is None and penalty is None:
        get_reward(base)
        return base
    components = [Component(c.fn, c.weight, c.name, dict(c.args)) for c in cfg.components] or [Component(base)]
    return ComposedReward(components, overlong=overlong, length_penalty=penalty)


# ----------------------------------------------------------------------------- helpers


def _check_args(name: str, fn: Any, args: dict) -> None:
    """A component's ``args`` must fit its function: say so now, not once per sample."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no introspectable signature: find out when it is called
        return
    try:
        signature.bind("", "", "", {}, **args)
    except TypeError as exc:
        raise RewardError(f"reward component {name!r}: args {args} do not fit {fn.__name__}{signature}: {exc}") from None


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _one_sync(fn, row, args) -> RewardResult:
    try:
        return normalize_result(resolve_awaitable(fn(*row, **args)))
    except Exception as exc:  # only this item fails; the worker reports the reason
        return RewardResult.failure(f"exception: {type(exc).__name__}: {exc}")


async def _one_async(fn, row, args) -> RewardResult:
    try:
        raw = fn(*row, **args)
        return normalize_result(await raw if inspect.isawaitable(raw) else raw)
    except Exception as exc:
        return RewardResult.failure(f"exception: {type(exc).__name__}: {exc}")


async def _first(coro):
    return (await coro)[0]


def _run_sync(coro):
    """Drive a coroutine that never suspends (no async component) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RewardError("a composed reward without async components suspended")


# ----------------------------------------------------------------------------- format rewards

_BOXED = re.compile(r"\\boxed\s*\{")


@register_reward("format_boxed")
def format_boxed(prompt: str, completion: str, ground_truth: str, metadata: dict) -> float:
    """1.0 if the completion ends its reasoning with a complete ``\\boxed{...}`` answer, else 0.0."""
    matches = list(_BOXED.finditer(completion))
    if not matches:
        return 0.0
    depth = 0
    for ch in completion[matches[-1].end() - 1:]:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return 1.0
    return 0.0  # unbalanced: truncated before the answer was closed


@register_reward("format_regex")
def format_regex(prompt: str, completion: str, ground_truth: str, metadata: dict, *, pattern: str,
                 fullmatch: bool = False) -> float:
    """1.0 if ``pattern`` matches the completion (``re.search``, or the whole text with ``fullmatch``)."""
    rx = _compiled(pattern)
    return float(bool(rx.fullmatch(completion) if fullmatch else rx.search(completion)))


_PATTERNS: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    rx = _PATTERNS.get(pattern)
    if rx is None:
        rx = _PATTERNS[pattern] = re.compile(pattern, re.DOTALL)
    return rx
