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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np


T = TypeVar("T")
_STATE_VERSION = 1


@dataclass
class AllocationConfig:
    """Allocator settings; any object with these attributes (or a mapping) works."""

    name: str = "uniform"
    n_samples: int = 8  # uniform per-prompt count; budget N = prompts * n_samples
    min_samples: int = 2  # per prompt (gvm / difficulty)
    max_samples: int = 32  # per prompt (gvm / difficulty)
    presample_n: int = 4  # pre-sampling pass size for prompts without stats
    reuse_presamples: bool = True  # pre-sampled generations may join the batch
    gvm_alpha: float = 1e-3
    gvm_beta: float = 2.0
    stats_decay: float = 0.5  # EMA weight of the newest visit
    filter_tol: float = 1e-6  # dapo: a group varies if max - min > tol
    max_rounds: int = 4  # dapo over-generation rounds
    difficulty_floor: float = 0.05

    def __post_init__(self) -> None:
        checks = [
            (self.n_samples >= 1, "n_samples must be >= 1"),
            (0 <= self.min_samples <= self.max_samples, "need 0 <= min_samples <= max_samples"),
            (self.max_samples >= 1, "max_samples must be >= 1"),
            (self.presample_n >= 1, "presample_n must be >= 1"),
            (0.0 < self.stats_decay <= 1.0, "stats_decay must be in (0, 1]"),
            (self.filter_tol >= 0.0, "filter_tol must be >= 0"),
            (self.max_rounds >= 1, "max_rounds must be >= 1"),
            (self.gvm_alpha >= 0.0 and math.isfinite(self.gvm_beta), "gvm_alpha >= 0, finite gvm_beta"),
            (self.difficulty_floor >= 0.0, "difficulty_floor must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"AllocationConfig: {msg} (got {self})")

    @classmethod
    def from_any(cls, cfg: Any = None) -> "AllocationConfig":
        """Build from ``None``, an AllocationConfig, a mapping or any attribute bag."""
        if cfg is None or isinstance(cfg, cls):
            return cfg if cfg is not None else cls()
        if isinstance(cfg, Mapping):
            return cls(**{f.name: cfg.get(f.name, f.default) for f in fields(cls)})
        return cls(**{f.name: getattr(cfg, f.name, f.default) for f in fields(cls)})


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

_ALLOCATORS: Dict[str, Any] = {}


def register_allocator(name: str) -> Callable[[T], T]:
    """Register a :class:`SampleAllocator` subclass (``cls(cfg)``) under ``name``."""

    def deco(cls: T) -> T:
        old = _ALLOCATORS.get(name)
        if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"allocator {name!r} is already registered ({old.__module__}.{old.__qualname__})")
        cls.name = name  # type: ignore[attr-defined]
        _ALLOCATORS[name] = cls
        return cls

    return deco


def get_allocator(name: str) -> Callable[..., "SampleAllocator"]:
    try:
        return _ALLOCATORS[name]
    except KeyError:
        raise KeyError(f"unknown allocator {name!r}; available: {', '.join(list_allocators())}") from None


def list_allocators() -> List[str]:
    return sorted(_ALLOCATORS)


def build_allocator(cfg: Any = None) -> "SampleAllocator":
    """Instantiate the allocator named by ``cfg.name`` (default ``"uniform"``)."""
    c = AllocationConfig.from_any(cfg)
    return get_allocator(c.name)(c)


# --------------------------------------------------------------------------- allocators

_COUNTERS = ("generated", "kept", "wasted", "step_generated", "step_kept", "step_wasted",
             "step_groups", "step_filtered_groups", "steps")


class SampleAllocator:
    """Base: uniform split, per-prompt EMA stats, counters and checkpoint state.

    Trainer protocol per step: ``start_step()``; ``needs_presample(keys)``;
    ``allocate(keys, budget)``; generate; ``keep_group(rewards)`` per group;
    ``observe(...)`` per prompt; ``record_round(...)`` per generation round
    (up to ``max_rounds``); ``metrics()``.
    """

    name = "base"
    needs_grad_norm = False

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = AllocationConfig.from_any(cfg)
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
        budget = len(keys) * self.cfg.n_samples if budget is None else int(budget)
        if budget < 0 or (not keys and budget != 0):
            raise ValueError(f"{self.name}: cannot allocate budget={budget} over {len(keys)} prompts")
        counts = self._allocate(list(keys), budget) if keys else []
        assert sum(counts) == budget, (counts, budget)
        self.last_allocation = list(counts)
        return list(counts)

    def _allocate(self, keys: List[str], budget: int) -> List[int]:
        return _even_split(len(keys), budget)

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
        d = self.cfg.stats_decay
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

    @property
    def max_rounds(self) -> int:
        return self.cfg.max_rounds

    def _keep(self, rewards: Sequence[float]) -> bool:
        r = np.asarray(rewards, dtype=np.float64)
        return bool(r.size > 0 and (r.max() - r.min()) > self.cfg.filter_tol)


class _WeightedAllocator(SampleAllocator):
    """Counts ``round_allocation(weights, budget, min_samples, max_samples)``.

    A prompt without usable stats gets the mean weight of those with stats
    (an uninformed guess that neither starves nor floods it); if no prompt has
    stats the split is even (within the bounds).
    """

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
        return round_allocation(weights, budget, self.cfg.min_samples, self.cfg.max_samples)


@register_allocator("gvm")
class GvmAllocator(_WeightedAllocator):
    """GVM-RAFT (Yao et al. 2025, arXiv:2505.02391): ``n_i`` proportional to
    :func:`gvm_scores` of the prompt's EMA acceptance rate and gradient norm.

    A prompt counts as known only once it has a gradient norm; unknown prompts
    need a pre-sampling pass of ``presample_n`` samples.
    """

    needs_grad_norm = True

    def _known(self, key: str) -> bool:
        s = self.stats.get(key)
        return s is not None and s.grad_norm is not None

    def _weight(self, s: PromptStats) -> Optional[float]:
        return float(gvm_scores([s.accept_rate], [s.grad_norm], self.cfg.gvm_alpha, self.cfg.gvm_beta)[0])


@register_allocator("difficulty")
class DifficultyAllocator(_WeightedAllocator):
    """DART-Math prop-to-difficulty (Tong et al. 2024, arXiv:2407.13690).

    Harder prompts (low acceptance) get more samples, weight
    ``(1 - p_i) + difficulty_floor``; the floor keeps solved prompts sampled.
    """

    def _weight(self, s: PromptStats) -> Optional[float]:
        return (1.0 - s.accept_rate) + self.cfg.difficulty_floor
