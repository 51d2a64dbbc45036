"""Dynamic per-prompt sample allocation under a fixed generation budget.

Why: with a fixed budget of ``N = prompts * n_samples`` generations per step,
spending them uniformly wastes compute on prompts that are always solved (or
never solved) and whose GRPO groups carry no gradient. Allocators decide how
many samples each prompt gets, learn per-prompt statistics across visits
(acceptance rate, gradient norm) and keep counters that go into checkpoints.

Pure Python + numpy: no torch, ray or vllm imports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np

from rlcore.plugins import OptionError, resolve


T = TypeVar("T")
_STATE_VERSION = 1


@dataclass(frozen=True)
class NoAllocatorOptions:
    """For allocators without settings of their own."""


@dataclass(frozen=True)
class DapoFilterOptions:
    filter_tol: float = 1e-6  # a group varies if max - min reward > tol
    max_rounds: int = 4  # generation rounds to fill the batch with varied groups

    def __post_init__(self) -> None:
        _require(self.filter_tol >= 0.0, "filter_tol", f"must be >= 0, got {self.filter_tol}")
        _require(self.max_rounds >= 1, "max_rounds", f"must be >= 1, got {self.max_rounds}")


@dataclass(frozen=True)
class WeightedOptions:
    """Allocators that weigh prompts by their statistics, gathered by pre-sampling."""

    min_samples: int = 4  # per prompt; with reuse_presamples at least presample_n
    max_samples: int = 32
    presample_n: int = 4  # pre-sampling pass for prompts without statistics
    reuse_presamples: bool = True  # pre-samples join their prompt's group and count in the budget
    stats_decay: float = 0.5  # weight of the newest visit in a prompt's running statistics

    def __post_init__(self) -> None:
        _require(0 <= self.min_samples <= self.max_samples, "min_samples",
                 f"need 0 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        _require(self.presample_n >= 1, "presample_n", f"must be >= 1, got {self.presample_n}")
        _require(not self.reuse_presamples or self.min_samples >= self.presample_n, "min_samples",
                 f"must be >= presample_n ({self.presample_n}) when reuse_presamples is true: "
                 "pre-sampled prompts already hold that many samples")
        _require(0.0 < self.stats_decay <= 1.0, "stats_decay", f"must be in (0, 1], got {self.stats_decay}")


@dataclass(frozen=True)
class GvmOptions(WeightedOptions):
    alpha: float = 1e-3
    beta: float = 2.0
    # Weight 0 for prompts whose every pre-sample was accepted: no GRPO advantage there (the
    # paper's RAFT objective still learns from them, so off by default).
    exclude_solved: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.alpha >= 0.0, "alpha", f"must be >= 0, got {self.alpha}")
        _require(math.isfinite(self.beta), "beta", f"must be finite, got {self.beta}")


@dataclass(frozen=True)
class DifficultyOptions(WeightedOptions):
    floor: float = 0.05  # weight (1 - p) + floor keeps solved prompts sampled

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.floor >= 0.0, "floor", f"must be >= 0, got {self.floor}")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise OptionError(key, message)


@dataclass
class PromptStats:
    """What one prompt taught us so far (EMA over visits)."""

    visits: int
    accept_rate: float
    grad_norm: Optional[float] = None


# --------------------------------------------------------------------------- pure functions


def gvm_scores(p: Sequence[float], G: Sequence[float], alpha: float = 1e-3, beta: float = 2.0) -> np.ndarray:
    """GVM-RAFT allocation scores ``s_i = G_i / sqrt(p_i + alpha / p_i**(beta-1))``.

    Yao et al. 2025, arXiv:2505.02391: minimising the variance of the rejection-
    sampling gradient estimate under a sample budget gives ``n_i`` proportional
    to this score (``p_i`` acceptance rate, ``G_i`` per-prompt gradient norm);
    the ``alpha`` term keeps hopeless prompts (``p -> 0``) from soaking up samples.
    ``s_i = 0`` when ``p_i == 0`` or ``G_i == 0``.
    """
    p_arr, g_arr = np.asarray(p, dtype=np.float64), np.asarray(G, dtype=np.float64)
    if p_arr.shape != g_arr.shape:
        raise ValueError(f"gvm_scores: p and G shapes differ: {p_arr.shape} vs {g_arr.shape}")
    if not (np.all(np.isfinite(p_arr)) and np.all((p_arr >= 0) & (p_arr <= 1))):
        raise ValueError(f"gvm_scores: p must be finite and in [0, 1], got {p_arr}")
    if not (np.all(np.isfinite(g_arr)) and np.all(g_arr >= 0)):
        raise ValueError(f"gvm_scores: G must be finite and >= 0, got {g_arr}")
    out = np.zeros_like(p_arr)
    ok = (p_arr > 0) & (g_arr > 0)
    pk = p_arr[ok]
    out[ok] = g_arr[ok] / np.sqrt(pk + alpha / pk ** (beta - 1.0))
    return out


def _even_split(n: int, total: int) -> List[int]:
    q, r = divmod(total, n)
    return [q + 1 if i < r else q for i in range(n)]


def _water_fill(w: np.ndarray, total: int, lo: int, hi: int) -> np.ndarray:
    """Continuous ``x_i = clip(lam * w_i, lo, hi)`` with ``sum x = total``.

    This is the fixed point of "clamp to bounds, redistribute the rest
    proportionally among the unclamped, iterate"; we solve for ``lam`` exactly
    on the piecewise-linear breakpoints instead of iterating.
    """
    pos = w > 0
    top = hi * pos.sum() + lo * (~pos).sum()
    if total >= top:  # positive weights saturate; zero-weight prompts share the rest evenly
        x = np.where(pos, float(hi), float(lo))
        if (~pos).any():
            x[~pos] += (total - top) / (~pos).sum()
        return x
    f = lambda lam: float(np.clip(lam * w, lo, hi).sum())  # noqa: E731
    prev = 0.0
    for b in np.unique(np.concatenate([lo / w[pos], hi / w[pos]])):
        if f(b) >= total:
            break
        prev = b
    mid = (prev + b) / 2  # which prompts are unclamped on the segment [prev, b]
    free = pos & (mid * w > lo) & (mid * w < hi)
    slope = float(w[free].sum())
    lam = prev if slope == 0 else prev + (total - f(prev)) / slope
    return np.clip(lam * w, lo, hi)


def round_allocation(weights: Sequence[float], total: int, min_n: int, max_n: int) -> List[int]:
    """Integer counts in ``[min_n, max_n]`` summing to ``total``, proportional to ``weights``.

    Water-filling gives the continuous target, then floor + largest remainder
    (ties: lower index first) makes it integral. All-zero weights -> even split.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    n, total = len(w), int(total)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"round_allocation: weights must be finite and >= 0, got {w.tolist()}")
    if min_n < 0 or min_n > max_n:
        raise ValueError(f"round_allocation: need 0 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
    if total < n * min_n or total > n * max_n:
        raise ValueError(
            f"round_allocation: total={total} infeasible for {n} prompts with per-prompt bounds "
            f"[{min_n}, {max_n}] (feasible totals: {n * min_n}..{n * max_n})"
        )
    if n == 0:
        return []
    if not w.any():
        w = np.ones(n)
    x = _water_fill(w, total, min_n, max_n)
    base = np.clip(np.floor(x + 1e-9), min_n, max_n).astype(np.int64)
    frac = np.round(x - base, 9)  # rounded so float noise cannot break index tie-breaks
    rem = total - int(base.sum())
    while rem != 0:
        step = 1 if rem > 0 else -1
        ok = base < max_n if step > 0 else base > min_n
        order = sorted(np.flatnonzero(ok), key=lambda i: (-step * frac[i], i))
        for i in order[: abs(rem)]:
            base[i] += step
            frac[i] -= step
        rem = total - int(base.sum())
    return [int(v) for v in base]


# --------------------------------------------------------------------------- registry

_ALLOCATORS: Dict[str, type] = {}


def register_allocator(name: str) -> Callable[[T], T]:
    """Register a :class:`SampleAllocator` subclass (``cls(options, n_samples)``) under ``name``."""

    def deco(cls: T) -> T:
        old = _ALLOCATORS.get(name)
        if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"allocator {name!r} is already registered ({old.__module__}.{old.__qualname__})")
        cls.name = name  # type: ignore[attr-defined]
        _ALLOCATORS[name] = cls
        return cls

    return deco


def get_allocator(name: str) -> type:
    """A registered name, or ``module:ATTR`` / ``path/to/file.py:ATTR`` naming a SampleAllocator
    subclass."""
    return resolve(name, _ALLOCATORS, "allocator",
                   lambda found: isinstance(found, type) and issubclass(found, SampleAllocator),
                   "a SampleAllocator subclass")


def list_allocators() -> List[str]:
    return sorted(_ALLOCATORS)


# --------------------------------------------------------------------------- allocators

_COUNTERS = ("generated", "kept", "wasted", "step_generated", "step_kept", "step_wasted",
             "step_groups", "step_filtered_groups", "steps")


class SampleAllocator:
    """Base: uniform split, per-prompt EMA stats, counters and checkpoint state.

    Sampler protocol per step (rlcore/sampling.py): ``start_step()``; ``needs_presample(keys)``;
    ``allocate(keys, budget)``; generate; ``keep_group(rewards)`` per group;
    ``observe(...)`` per prompt; ``record_round(...)`` per generation round
    (up to ``max_rounds``); ``metrics()``.

    A subclass declares its settings as ``Options`` (a dataclass: ``allocation.options`` in the
    YAML, checked at load) and may check them against the per-prompt budget in
    :meth:`check_budget`.
    """

    name = "base"
    Options: type = NoAllocatorOptions
    needs_grad_norm = False
    presample_n = 0  # pre-samples per prompt without statistics (0: no pre-sampling pass)
    reuse_presamples = False
    stats_decay = 0.5  # weight of the newest visit in a prompt's running statistics

    def __init__(self, options: Any = None, n_samples: int = 8) -> None:
        self.options = self.Options() if options is None else options
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{self.name}: options must be {self.Options.__name__}, got {type(self.options).__name__}")
        if n_samples < 1:
            raise ValueError(f"{self.name}: n_samples must be >= 1, got {n_samples}")
        self.n_samples = n_samples
        self.check_budget(self.options, n_samples)
        self.stats: Dict[str, PromptStats] = {}
        self.counters: Dict[str, int] = {k: 0 for k in _COUNTERS}
        self.last_allocation: List[int] = []

    @property
    def max_rounds(self) -> int:
        return 1

    def needs_presample(self, keys: Sequence[str]) -> List[bool]:
        return [False] * len(keys)

    def allocate(self, keys: Sequence[str], budget: Optional[int] = None) -> List[int]:
        """Per-prompt counts summing exactly to ``budget`` (default ``len(keys) * n_samples``)."""
        budget = len(keys) * self.n_samples if budget is None else int(budget)
        if budget < 0 or (not keys and budget != 0):
            raise ValueError(f"{self.name}: cannot allocate budget={budget} over {len(keys)} prompts")
        counts = self._allocate(list(keys), budget) if keys else []
        assert sum(counts) == budget, (counts, budget)
        self.last_allocation = list(counts)
        return list(counts)

    def _allocate(self, keys: List[str], budget: int) -> List[int]:
        return _even_split(len(keys), budget)

    @classmethod
    def check_budget(cls, options: Any, n_samples: int) -> None:
        """Raise OptionError when `options` cannot serve `n_samples` per prompt on average."""

    def observe(self, key: str, num_samples: int, num_accepted: int, grad_norm: Optional[float] = None) -> None:
        """Fold one visit into ``stats[key]``: first visit sets, later visits EMA with ``stats_decay``."""
        if num_samples < 0 or not 0 <= num_accepted <= num_samples:
            raise ValueError(f"observe({key!r}): need 0 <= num_accepted <= num_samples, "
                             f"got {num_accepted}/{num_samples}")
        if grad_norm is not None and not (math.isfinite(grad_norm) and grad_norm >= 0):
            raise ValueError(f"observe({key!r}): grad_norm must be finite and >= 0, got {grad_norm}")
        if num_samples == 0:
            return  # nothing learned
        rate, g = num_accepted / num_samples, None if grad_norm is None else float(grad_norm)
        old = self.stats.get(key)
        if old is None:
            self.stats[key] = PromptStats(1, rate, g)
            return
        d = self.stats_decay
        old.visits += 1
        old.accept_rate = (1 - d) * old.accept_rate + d * rate
        if g is not None:
            old.grad_norm = g if old.grad_norm is None else (1 - d) * old.grad_norm + d * g

    def keep_group(self, rewards: Sequence[float]) -> bool:
        keep = self._keep(rewards)
        self.counters["step_groups"] += 1
        self.counters["step_filtered_groups"] += int(not keep)
        return keep

    def _keep(self, rewards: Sequence[float]) -> bool:
        return True

    def start_step(self) -> None:
        """Reset the per-step counters reported by :meth:`metrics`."""
        for k in _COUNTERS:
            if k.startswith("step_"):
                self.counters[k] = 0
        self.counters["steps"] += 1

    def record_round(self, generated: int, kept_samples: int, wasted: int) -> None:
        """Trainer report for one generation round; ``wasted`` = dropped groups + surplus."""
        if min(generated, kept_samples, wasted) < 0 or kept_samples + wasted > generated:
            raise ValueError(f"record_round: need non-negative counts with kept + wasted <= generated, "
                             f"got generated={generated}, kept={kept_samples}, wasted={wasted}")
        for k, v in (("generated", generated), ("kept", kept_samples), ("wasted", wasted)):
            self.counters[k] += int(v)
            self.counters["step_" + k] += int(v)

    def metrics(self) -> Dict[str, float]:
        c, a = self.counters, np.asarray(self.last_allocation or [0], dtype=np.float64)
        return {
            "alloc/samples_min": float(a.min()),
            "alloc/samples_max": float(a.max()),
            "alloc/samples_mean": float(a.mean()),
            "alloc/samples_std": float(a.std()),
            "alloc/prompts_with_stats": float(len(self.stats)),
            "alloc/generated_total": float(c["generated"]),
            "alloc/kept_total": float(c["kept"]),
            "alloc/wasted_total": float(c["wasted"]),
            "alloc/wasted_step": float(c["step_wasted"]),
            "alloc/filtered_groups_frac": c["step_filtered_groups"] / max(c["step_groups"], 1),
        }

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serialisable state (stats table, counters, last allocation)."""
        return {
            "version": _STATE_VERSION,
            "name": self.name,
            "stats": {k: asdict(s) for k, s in self.stats.items()},
            "counters": dict(self.counters),
            "last_allocation": list(self.last_allocation),
        }

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        if d.get("version") != _STATE_VERSION:
            raise ValueError(f"allocator state version {d.get('version')!r} != {_STATE_VERSION}")
        self.stats = {
            str(k): PromptStats(int(s["visits"]), float(s["accept_rate"]),
                                None if s.get("grad_norm") is None else float(s["grad_norm"]))
            for k, s in d["stats"].items()
        }
        self.counters = {k: int(d["counters"].get(k, 0)) for k in _COUNTERS}
        self.last_allocation = [int(v) for v in d.get("last_allocation", [])]


@register_allocator("uniform")
class UniformAllocator(SampleAllocator):
    """Every prompt gets ``budget / len(keys)`` samples (remainder to the first prompts)."""


@register_allocator("dapo_filter")
class DapoFilterAllocator(SampleAllocator):
    """DAPO dynamic sampling (Yu et al. 2025, arXiv:2503.14476).

    Uniform counts, but groups whose rewards do not vary (all right or all
    wrong: zero GRPO advantage, zero gradient) are dropped and the trainer
    over-generates for up to ``max_rounds`` rounds to refill the batch.
    ``filter_tol`` keeps float noise (``[1.0, 1.0 + 1e-12]``) from counting as
    variation. NaN rewards never count as varied.
    """

    Options = DapoFilterOptions

    @property
    def max_rounds(self) -> int:
        return self.options.max_rounds

    def _keep(self, rewards: Sequence[float]) -> bool:
        r = np.asarray(rewards, dtype=np.float64)
        return bool(r.size > 0 and (r.max() - r.min()) > self.options.filter_tol)


class _WeightedAllocator(SampleAllocator):
    """Counts ``round_allocation(weights, budget, min_samples, max_samples)``.

    A prompt without usable stats gets the mean weight of those with stats
    (an uninformed guess that neither starves nor floods it); if no prompt has
    stats the split is even (within the bounds).
    """

    Options = WeightedOptions

    @property
    def presample_n(self) -> int:  # type: ignore[override]
        return self.options.presample_n

    @property
    def reuse_presamples(self) -> bool:  # type: ignore[override]
        return self.options.reuse_presamples

    @property
    def stats_decay(self) -> float:  # type: ignore[override]
        return self.options.stats_decay

    @classmethod
    def check_budget(cls, options: WeightedOptions, n_samples: int) -> None:
        if not options.min_samples <= n_samples <= options.max_samples:
            raise OptionError("max_samples", f"the per-prompt budget rollout.n_samples={n_samples} must lie within "
                              f"[min_samples, max_samples] = [{options.min_samples}, {options.max_samples}]")

    def _weight(self, s: PromptStats) -> Optional[float]:
        raise NotImplementedError

    def _known(self, key: str) -> bool:
        return key in self.stats

    def needs_presample(self, keys: Sequence[str]) -> List[bool]:
        return [not self._known(k) for k in keys]

    def _allocate(self, keys: List[str], budget: int) -> List[int]:
        w = [self._weight(self.stats[k]) if self._known(k) else None for k in keys]
        known = [v for v in w if v is not None]
        fill = float(np.mean(known)) if known else 1.0
        weights = [fill if v is None else v for v in w]
        return round_allocation(weights, budget, self.options.min_samples, self.options.max_samples)


@register_allocator("gvm")
class GvmAllocator(_WeightedAllocator):
    """GVM-RAFT (Yao et al. 2025, arXiv:2505.02391): ``n_i`` proportional to
    :func:`gvm_scores` of the prompt's EMA acceptance rate and gradient norm.

    A prompt counts as known only once it has a gradient norm; unknown prompts
    need a pre-sampling pass of ``presample_n`` samples.
    """

    Options = GvmOptions
    needs_grad_norm = True

    def _known(self, key: str) -> bool:
        s = self.stats.get(key)
        return s is not None and s.grad_norm is not None

    def _weight(self, s: PromptStats) -> Optional[float]:
        if self.options.exclude_solved and s.accept_rate >= 1.0:
            return 0.0
        return float(gvm_scores([s.accept_rate], [s.grad_norm], self.options.alpha, self.options.beta)[0])


@register_allocator("difficulty")
class DifficultyAllocator(_WeightedAllocator):
    """DART-Math prop-to-difficulty (Tong et al. 2024, arXiv:2407.13690).

    Harder prompts (low acceptance) get more samples, weight
    ``(1 - p_i) + floor``; the floor keeps solved prompts sampled.
    """

    Options = DifficultyOptions

    def _weight(self, s: PromptStats) -> Optional[float]:
        return (1.0 - s.accept_rate) + self.options.floor
