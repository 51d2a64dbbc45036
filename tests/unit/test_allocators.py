"""Unit tests for ``algorithms.allocators`` (pure python + numpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from algorithms.allocators import (
    GvmOptions,
    PromptStats,
    SampleAllocator,
    WeightedOptions,
    get_allocator,
    gvm_scores,
    list_allocators,
    register_allocator,
    round_allocation,
)


def make(name: str, n_samples: int = 8, **options) -> SampleAllocator:
    cls = get_allocator(name)
    return cls(cls.Options(**options), n_samples=n_samples)


# ------------------------------------------------------------------ gvm_scores


def test_gvm_scores_matches_formula_with_zeros():
    s = gvm_scores([0.5, 0.25, 0.0, 1.0, 0.5], [2.0, 1.0, 3.0, 0.0, 1.0], alpha=0.01, beta=2.0)
    expected = [2 / math.sqrt(0.52), 1 / math.sqrt(0.29), 0.0, 0.0, 1 / math.sqrt(0.52)]
    np.testing.assert_allclose(s, expected, rtol=1e-12)
    # beta = 3: p + alpha / p**2
    s3 = gvm_scores([0.5], [2.0], alpha=0.01, beta=3.0)
    assert s3[0] == pytest.approx(2 / math.sqrt(0.5 + 0.01 / 0.25), rel=1e-12)
    # defaults alpha=1e-3, beta=2
    assert gvm_scores([0.5], [1.0])[0] == pytest.approx(1 / math.sqrt(0.502), rel=1e-12)


def test_gvm_scores_validation():
    with pytest.raises(ValueError, match="shapes differ"):
        gvm_scores([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="p must"):
        gvm_scores([1.5], [1.0])
    with pytest.raises(ValueError, match="G must"):
        gvm_scores([0.5], [float("nan")])


# ------------------------------------------------------------------ round_allocation


def test_round_allocation_proportional_when_bounds_do_not_bind():
    assert round_allocation([1, 2, 3, 4], 20, 0, 100) == [2, 4, 6, 8]
    # 2.5, 2.5, 5 -> floors 2, 2, 5; the one leftover goes to the lower index on a tie
    assert round_allocation([1, 1, 2], 10, 0, 100) == [3, 2, 5]
    # 10/3 each -> [4, 3, 3]; all-zero weights behave the same (even split)
    assert round_allocation([1, 1, 1], 10, 0, 100) == [4, 3, 3]
    assert round_allocation([0, 0, 0], 10, 1, 6) == [4, 3, 3]
    # largest remainder wins: x = 1.6, 3.2, 5.2 -> floors 1, 3, 5, leftover 1 to index 0
    assert round_allocation([1, 2, 3.25], 10, 0, 100) == [2, 3, 5]
    assert round_allocation([], 0, 2, 4) == []


def test_round_allocation_random_properties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        w = rng.random(n) * (rng.random(n) > 0.2)
        lo = int(rng.integers(0, 4))
        hi = lo + int(rng.integers(0, 20))
        total = int(rng.integers(n * lo, n * hi + 1))
        out = round_allocation(w, total, lo, hi)
        assert sum(out) == total
        assert all(lo <= v <= hi for v in out)
        assert all(isinstance(v, int) for v in out)
        # loose bounds: within one sample of the exact proportional split
        if w.sum() > 0:
            free = round_allocation(w, 50, 0, 50)
            assert np.all(np.abs(np.asarray(free) - 50 * w / w.sum()) < 1)


def test_round_allocation_water_filling_when_bounds_bind():
    # upper bound binds: 10:1:1 of 12 -> first clamps at 6, the rest split 3/3
    assert round_allocation([10, 1, 1], 12, 1, 6) == [6, 3, 3]
    # cascade: 6:3:1 of 10 with max 4 -> 4, then 4.5:1.5 -> 4 clamps, 2 left
    assert round_allocation([6, 3, 1], 10, 0, 4) == [4, 4, 2]
    # lower bound binds for a zero weight
    assert round_allocation([0, 1, 1], 10, 2, 8) == [2, 4, 4]
    # both bind
    assert round_allocation([100, 1, 0, 1], 16, 2, 8) == [8, 3, 2, 3]
    # positive weights saturate; zero-weight prompts share the rest evenly
    assert round_allocation([1, 0, 0], 12, 1, 6) == [6, 3, 3]
    # extremes of feasibility
    assert round_allocation([5, 1, 0], 6, 2, 9) == [2, 2, 2]
    assert round_allocation([5, 1, 0], 27, 2, 9) == [9, 9, 9]


def test_round_allocation_errors():
    with pytest.raises(ValueError, match="infeasible"):
        round_allocation([1, 1, 1], 5, 2, 8)  # < 3 * 2
    with pytest.raises(ValueError, match="infeasible"):
        round_allocation([1, 1, 1], 25, 2, 8)  # > 3 * 8
    with pytest.raises(ValueError, match="finite and >= 0"):
        round_allocation([1, -1], 4, 0, 4)
    with pytest.raises(ValueError, match="finite and >= 0"):
        round_allocation([1, float("nan")], 4, 0, 4)
    with pytest.raises(ValueError, match="min_n <= max_n"):
        round_allocation([1, 1], 4, 3, 2)


# ------------------------------------------------------------------ registry / config


def test_registry_and_typed_options():
    from rlcore.plugins import OptionError

    assert {"uniform", "dapo_filter", "gvm", "difficulty"} <= set(list_allocators())
    with pytest.raises(KeyError, match="registered: .*uniform"):
        get_allocator("nope")
    a = make("dapo_filter", max_rounds=7)
    assert a.name == "dapo_filter" and a.max_rounds == 7 and a.n_samples == 8
    assert get_allocator("gvm")().options == GvmOptions() and get_allocator("uniform")().presample_n == 0
    assert make("gvm").presample_n == 4 and make("gvm", presample_n=2).reuse_presamples
    with pytest.raises(OptionError, match="min_samples"):
        WeightedOptions(min_samples=5, max_samples=4)
    with pytest.raises(OptionError, match="stats_decay"):
        GvmOptions(stats_decay=0.0)
    with pytest.raises(OptionError, match="min_samples: must be >= presample_n"):
        GvmOptions(min_samples=2)  # reuse_presamples: pre-sampled prompts already hold 4
    with pytest.raises(OptionError, match="per-prompt budget rollout.n_samples=64"):
        make("gvm", n_samples=64)
    with pytest.raises(TypeError, match="GvmOptions"):
        get_allocator("gvm")(WeightedOptions())
    with pytest.raises(ValueError, match="already registered"):
        register_allocator("uniform")(type("Other", (SampleAllocator,), {}))


# ------------------------------------------------------------------ allocators


def test_uniform():
    a = make("uniform")
    keys = ["a", "b", "c", "d"]
    assert a.allocate(keys, 32) == [8, 8, 8, 8]
    assert a.allocate(keys) == [8, 8, 8, 8]  # default budget = prompts * n_samples
    assert a.allocate(keys[:3], 10) == [4, 3, 3]
    assert a.needs_presample(keys) == [False] * 4
    assert not a.needs_grad_norm and a.max_rounds == 1
    assert a.keep_group([1.0, 1.0]) and a.keep_group([])
    m = a.metrics()
    assert (m["alloc/samples_min"], m["alloc/samples_max"]) == (3.0, 4.0)
    assert m["alloc/samples_std"] == pytest.approx(np.std([4, 3, 3]))
    assert a.allocate([], 0) == []
    with pytest.raises(ValueError):
        a.allocate([], 3)


def test_dapo_keep_group_tolerance_and_counters():
    a = make("dapo_filter", max_rounds=3)
    assert a.max_rounds == 3 and a.needs_presample(["x"]) == [False]
    assert a.allocate(["x", "y"], 16) == [8, 8]
    a.start_step()
    assert not a.keep_group([1.0, 1.0 + 1e-12])  # float noise is not variation
    assert a.keep_group([0.0, 1.0])
    assert not a.keep_group([0.5, 0.5, 0.5])
    assert not a.keep_group([])
    assert not a.keep_group([0.0, float("nan")])
    assert make("dapo_filter", filter_tol=0.5).keep_group([0.0, 0.4]) is False
    a.record_round(generated=32, kept_samples=8, wasted=24)
    a.record_round(generated=16, kept_samples=8, wasted=6)
    m = a.metrics()
    assert m["alloc/filtered_groups_frac"] == pytest.approx(4 / 5)
    assert (m["alloc/wasted_total"], m["alloc/generated_total"], m["alloc/kept_total"]) == (30.0, 48.0, 16.0)
    a.start_step()
    a.keep_group([0.0, 1.0])
    a.record_round(8, 8, 0)
    m = a.metrics()
    assert m["alloc/filtered_groups_frac"] == 0.0 and m["alloc/wasted_step"] == 0.0
    assert m["alloc/wasted_total"] == 30.0
    with pytest.raises(ValueError, match="record_round"):
        a.record_round(4, 4, 1)
    b = make("dapo_filter")
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.counters == a.counters and b.metrics() == a.metrics()


def test_observe_ema():
    a = make("difficulty", stats_decay=0.5)
    a.observe("k", 8, 4, grad_norm=2.0)
    assert a.stats["k"] == PromptStats(1, 0.5, 2.0)
    a.observe("k", 8, 8, grad_norm=4.0)
    assert a.stats["k"] == PromptStats(2, 0.75, 3.0)
    a.observe("k", 4, 0)  # no grad norm: keep the old one
    assert a.stats["k"] == PromptStats(3, 0.375, 3.0)
    a.observe("n", 4, 1)
    a.observe("n", 4, 3, grad_norm=1.5)  # first grad norm is set, not averaged
    assert a.stats["n"] == PromptStats(2, 0.5, 1.5)
    b = make("difficulty", stats_decay=0.25)
    b.observe("k", 4, 0)
    b.observe("k", 4, 4)
    assert b.stats["k"].accept_rate == pytest.approx(0.25)
    with pytest.raises(ValueError, match="num_accepted"):
        a.observe("k", 4, 5)
    with pytest.raises(ValueError, match="grad_norm"):
        a.observe("k", 4, 1, grad_norm=-1.0)


def test_gvm_allocate_from_observed_stats():
    a = make("gvm", min_samples=1, max_samples=32, reuse_presamples=False)  # alpha=1e-3, beta=2
    assert a.needs_grad_norm and a.max_rounds == 1
    keys = ["a", "b", "c"]
    assert a.needs_presample(keys) == [True, True, True]
    assert a.allocate(keys, 30) == [10, 10, 10]  # no stats: even split
    a.observe("a", 8, 4, grad_norm=2.0)  # p=.5,  G=2
    a.observe("b", 8, 2, grad_norm=1.0)  # p=.25, G=1
    a.observe("c", 8, 4, grad_norm=1.0)  # p=.5,  G=1
    a.observe("d", 8, 4)  # no grad norm yet -> still needs a presample
    assert a.needs_presample(keys + ["d", "e"]) == [False, False, False, True, True]
    # scores 2/sqrt(.502)=2.8228, 1/sqrt(.254)=1.9842, 1/sqrt(.502)=1.4114
    # -> x = 13.618, 9.572, 6.809 -> floors 13, 9, 6; two leftovers to c (.809), a (.618)
    counts = a.allocate(keys, 30)
    assert counts == [14, 9, 7]
    assert counts[0] > counts[2]  # larger G, same p
    assert counts[1] > counts[2]  # lower p, same G
    # an unknown prompt gets the mean score of the known ones
    s = gvm_scores([0.5, 0.25, 0.5], [2.0, 1.0, 1.0])
    w = list(s) + [float(s.mean())]
    assert a.allocate(keys + ["e"], 40) == round_allocation(w, 40, 1, 32)
    assert sum(a.allocate(keys + ["e"], 40)) == 40
    # bounds bind
    b = make("gvm", min_samples=2, max_samples=12, reuse_presamples=False)
    b.observe("hot", 8, 4, grad_norm=100.0)
    b.observe("cold", 8, 0, grad_norm=5.0)  # p = 0 -> score 0 -> min_samples
    b.observe("mid", 8, 4, grad_norm=1.0)
    assert b.allocate(["hot", "cold", "mid"], 24) == [12, 2, 10]


def test_difficulty_allocate():
    a = make("difficulty", min_samples=1, max_samples=32, reuse_presamples=False)  # floor 0.05
    assert not a.needs_grad_norm
    for k, acc in (("hard", 0), ("mid", 4), ("easy", 8)):
        a.observe(k, 8, acc)
    # weights 1.05, 0.55, 0.05 of 33 -> 21, 11, 1
    assert a.allocate(["hard", "mid", "easy"], 33) == [21, 11, 1]
    assert a.needs_presample(["hard", "new"]) == [False, True]
    # unknown prompt gets the mean weight (0.55) -> same as "mid"
    out = a.allocate(["hard", "mid", "easy", "new"], 44)
    assert out[1] == out[3] and sum(out) == 44
    assert out == round_allocation([1.05, 0.55, 0.05, 0.55], 44, 1, 32)


def test_state_dict_round_trip_gives_identical_allocations():
    for name in ("gvm", "difficulty", "dapo_filter", "uniform"):
        options = {"stats_decay": 0.3} if name in ("gvm", "difficulty") else {}
        a = make(name, **options)
        rng = np.random.default_rng(1)
        keys = [f"p{i}" for i in range(7)]
        for _ in range(3):
            for k in keys[:5]:
                a.observe(k, 7, int(rng.integers(0, 8)), grad_norm=float(rng.random()) / 3)
            a.start_step()
            a.keep_group([0.0, 1.0])
            a.keep_group([1.0, 1.0])
            a.record_round(14, 7, 7)
        before = a.allocate(keys, 61)
        blob = json.dumps(a.state_dict())
        b = make(name, **options)
        b.load_state_dict(json.loads(blob))
        assert b.state_dict() == a.state_dict()
        assert b.stats == a.stats and b.counters == a.counters
        assert b.allocate(keys, 61) == before == a.allocate(keys, 61)
        assert b.metrics() == a.metrics()
        assert b.needs_presample(keys) == a.needs_presample(keys)
    with pytest.raises(ValueError, match="version"):
        make("gvm").load_state_dict({"version": 99})


def test_an_allocator_from_a_file_with_typed_options_from_the_config(tmp_path):
    from rlcore.config import ConfigError, load_config

    (tmp_path / "first_heavy.py").write_text(
        "from dataclasses import dataclass\n"
        "from algorithms.allocators import SampleAllocator\n"
        "from rlcore.plugins import OptionError\n\n"
        "@dataclass(frozen=True)\n"
        "class Opts:\n"
        "    extra: int = 2\n"
        "    def __post_init__(self):\n"
        "        if self.extra < 0:\n"
        "            raise OptionError('extra', 'must be >= 0')\n\n"
        "class FirstHeavy(SampleAllocator):\n"
        "    Options = Opts\n"
        "    def _allocate(self, keys, budget):\n"
        "        rest = budget - self.options.extra\n"
        "        return [rest // len(keys) + self.options.extra] + [rest // len(keys)] * (len(keys) - 1)\n\n"
        "NOT_AN_ALLOCATOR = 3\n")
    config = tmp_path / "exp.yaml"
    config.write_text("model:\n  path: x\nallocation:\n  name: first_heavy.py:FirstHeavy\n  options:\n    extra: 4\n")
    cfg = load_config(config)
    assert cfg.allocation.name == f"{tmp_path / 'first_heavy.py'}:FirstHeavy"  # relative to the config
    allocator = get_allocator(cfg.allocation.name)(cfg.allocation.options, n_samples=8)
    assert allocator.allocate(["a", "b"], 16) == [10, 6]
    config.write_text(config.read_text().replace("extra: 4", "extra: -1"))
    with pytest.raises(ConfigError, match=r"exp\.yaml:6: allocation\.options\.extra: must be >= 0"):
        load_config(config)
    with pytest.raises(ConfigError, match="allocation.name: .*names 3, not a SampleAllocator subclass"):
        load_config(None, ["model.path=x", f"allocation.name={tmp_path / 'first_heavy.py'}:NOT_AN_ALLOCATOR"])
