"""GroupSampler carries out allocator plans: counts, seeds, DAPO rounds, GVM pre-sampling."""
from __future__ import annotations


import numpy as np
import pytest

from algorithms.allocators import get_allocator
from rewards.schema import RewardResult
from rlcore.batch import pad_rows, select_rows
from rlcore.data.source import PromptSource
from rlcore.sampling import GroupSampler
from rollout.engine import Completion


class Renderer:
    def ids(self, record):
        return [1, 2, int(record["id"][1:])]


def make_records(n):
    return [{"id": f"p{i}", "prompt": f"q{i}", "answer": "x"} for i in range(n)]


class FakeWorld:
    """Completion token = seed % 1000; prompt i is solved by a sample with probability rate[i]."""

    def __init__(self, rates):
        self.rates = rates
        self.requests = []

    def generate(self, requests):
        self.requests += requests
        return [Completion([r.seed % 1000 + 3], [-0.5], "stop") for r in requests]

    def score(self, records, completions):
        out = []
        for rec, c in zip(records, completions):
            rate = self.rates[int(rec["id"][1:])]
            ok = (c.token_ids[0] % 100) < rate * 100
            out.append(RewardResult(score=float(ok), correct=ok))
        return out


def seed_fn(p, j):
    return int(np.random.SeedSequence([0, p, j]).generate_state(1)[0] >> 1)


SETTINGS = {"dapo_filter": dict(max_rounds=3), "gvm": dict(max_samples=12), "difficulty": dict(max_samples=12)}


def allocator(name, **kw):
    cls = get_allocator(name)
    return cls(cls.Options(**{**SETTINGS.get(name, {}), **kw}), n_samples=4)


def sampler(alloc, records, prompts=4, n=4):
    source = PromptSource(records, prompts, seed=0, drop_last=True)
    return GroupSampler(alloc, source, Renderer(), prompts, n)


def test_uniform_gives_n_distinct_seeded_samples_per_prompt():
    world = FakeWorld([0.5] * 8)
    groups, m = sampler(allocator("uniform"), make_records(8)).sample(seed_fn, world.generate, world.score)
    assert [len(g.completions) for g in groups] == [4, 4, 4, 4]
    assert m["samples/step_generated"] == 16 and m["samples/wasted"] == 0
    seeds = [r.seed for r in world.requests]
    assert len(set(seeds)) == 16
    # The seed of sample j of prompt i is seed_fn(i, j): the same as before allocation existed.
    assert seeds[:4] == [seed_fn(0, j) for j in range(4)]


def test_dapo_filter_over_generates_until_the_batch_holds_only_varied_groups():
    # Prompts 0-3 are always or never solved (no signal); 4-7 sometimes.
    rates = [0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    world = FakeWorld(rates)
    records = make_records(8)
    alloc = allocator("dapo_filter")
    groups, m = sampler(alloc, records).sample(seed_fn, world.generate, world.score)
    assert all(len(set(g.scores)) > 1 for g in groups)
    assert m["samples/rounds"] >= 2
    generated = m["samples/step_generated"]
    assert generated == 16 * m["samples/rounds"]
    kept = sum(len(g.completions) for g in groups)
    assert m["samples/wasted"] == generated - kept
    assert alloc.metrics()["alloc/wasted_total"] == m["samples/wasted"]


def test_dapo_filter_stops_after_max_rounds_with_what_it_has():
    world = FakeWorld([1.0] * 8)  # nothing ever varies
    groups, m = sampler(allocator("dapo_filter", max_rounds=2), make_records(8)).sample(
        seed_fn, world.generate, world.score)
    assert groups == [] and m["samples/rounds"] == 2 and m["samples/wasted"] == 32


def test_gvm_presamples_computes_grad_norms_and_reuses_presamples_within_budget():
    world = FakeWorld([0.0, 0.25, 0.5, 1.0, 0.5, 0.5, 0.5, 0.5])
    calls = []

    def grad_norms(prompt_ids, accepted):
        calls.append((prompt_ids, accepted))
        return [1.0 + k for k in range(len(prompt_ids))]

    alloc = allocator("gvm")
    groups, m = sampler(alloc, make_records(8)).sample(seed_fn, world.generate, world.score, grad_norms)
    # Budget 4 prompts x 4 samples, min 4: the reused pre-samples are the whole allocation.
    assert [len(g.completions) for g in groups] == [4, 4, 4, 4]
    assert m["samples/step_generated"] == 16
    assert len(calls) == 1
    # Only prompts with an accepted pre-sample get a gradient-norm computation, with only accepted samples.
    for comps in calls[0][1]:
        assert comps
    seeds = [r.seed for r in world.requests]
    assert len(seeds) == len(set(seeds))


def test_gvm_spends_the_budget_beyond_presamples_by_the_formula():
    world = FakeWorld([0.5] * 8)
    norms = {0: 4.0, 1: 1.0, 2: 1.0, 3: 1.0}
    alloc = allocator("gvm")
    s = sampler(alloc, make_records(4), n=8)

    def grad_norms(prompt_ids, accepted):
        return [norms[p[-1]] for p in prompt_ids]

    groups, m = s.sample(seed_fn, world.generate, world.score, grad_norms)
    counts = {g.prompt_ids[-1]: len(g.completions) for g in groups}
    assert sum(counts.values()) == 32
    assert m["samples/step_generated"] == 32  # pre-samples are part of the budget when reused
    if alloc.stats["p0"].accept_rate > 0:
        assert counts[0] == max(counts.values())


def test_presamples_not_reused_still_get_fresh_seeds():
    world = FakeWorld([0.5] * 4)
    alloc = allocator("difficulty", min_samples=2, reuse_presamples=False)
    s = sampler(alloc, make_records(4))
    groups, m = s.sample(seed_fn, world.generate, world.score)
    seeds = [r.seed for r in world.requests]
    assert len(seeds) == len(set(seeds))
    assert m["samples/step_generated"] == 16 + 16
    assert sum(len(g.completions) for g in groups) == 16


def test_pad_rows_adds_loss_free_copies_and_select_rows_subsets():
    batch = {
        "input_ids": np.arange(6).reshape(3, 2), "attention_mask": np.ones((3, 2), dtype=np.int64),
        "loss_mask": np.ones((3, 1), dtype=np.float32), "advantages": np.full((3, 1), 2.0, dtype=np.float32),
    }
    padded = pad_rows(batch, 4)
    assert len(padded["input_ids"]) == 4
    assert (padded["input_ids"][3] == batch["input_ids"][0]).all()
    assert padded["loss_mask"][3].sum() == 0 and padded["advantages"][3].sum() == 0
    assert pad_rows(batch, 3) is batch
    sub = select_rows(batch, np.array([2]))
    assert sub["input_ids"].tolist() == [[4, 5]]


@pytest.mark.parametrize("name", ["uniform", "gvm", "difficulty", "dapo_filter"])
def test_sampling_is_deterministic(name):
    def run():
        world = FakeWorld([0.3, 0.6, 0.9, 0.0, 0.5, 0.5, 0.2, 0.7])
        s = sampler(allocator(name), make_records(8))
        groups, _ = s.sample(seed_fn, world.generate, world.score, lambda p, a: [1.0] * len(p))
        return [(g.record["id"], [c.token_ids for c in g.completions]) for g in groups]

    assert run() == run()


def chunk_sampler(records, every=3, prompts=4, **options):
    cls = get_allocator("gvm")
    alloc = cls(cls.Options(**{"presample_n": 4, "min_samples": 0, "max_samples": 12, "reuse_presamples": False,
                               **options}), n_samples=4)
    source = PromptSource(records, prompts, seed=0, drop_last=True)
    return GroupSampler(alloc, source, Renderer(), prompts, 4, every=every)


def test_a_chunk_is_presampled_and_allocated_once_then_served_step_by_step():
    rates = [0.1, 0.9, 0.5, 0.3, 0.7, 0.5, 0.2, 0.8, 0.6, 0.4, 0.5, 0.5] * 2
    world = FakeWorld(rates)
    s = chunk_sampler(make_records(24))
    norms = lambda prompt_ids, accepted: [1.0 + p[-1] for p in prompt_ids]  # noqa: E731
    groups, m = s.sample(seed_fn, world.generate, world.score, norms)
    # The first step pre-samples all 3 steps' 12 prompts and allocates their 48-sample budget at once.
    assert m["samples/step_presampled"] == 48
    plan = s.allocator.last_allocation
    assert len(plan) == 12 and sum(plan) == 48 and len(set(plan)) > 1
    served = {g.record["id"]: len(g.completions) for g in groups}
    assert m["samples/step_generated"] == 48 + sum(served.values())
    first_step_seeds = [r.seed for r in world.requests]
    assert len(first_step_seeds) == len(set(first_step_seeds))  # fills continue after the pre-samples' seeds
    steps = [served]
    for _ in range(2):
        before = len(world.requests)
        groups, m = s.sample(seed_fn, world.generate, world.score, norms)
        assert m["samples/step_presampled"] == 0 and len(world.requests) - before == m["samples/step_generated"]
        steps.append({g.record["id"]: len(g.completions) for g in groups})
    # Steps serve the chunk's prompts in draw order with the counts allocated at its start.
    chunk = [r["id"] for r in PromptSource(make_records(24), 4, seed=0, drop_last=True).next_batch()]
    assert list(steps[0]) == [k for k, n in zip(chunk, plan[:4]) if n > 0]
    assert sum(sum(st.values()) for st in steps) == 48
    _, m = s.sample(seed_fn, world.generate, world.score, norms)
    assert m["samples/step_presampled"] == 48  # the next chunk's new prompts are pre-sampled and planned anew


def test_a_chunk_plan_survives_a_checkpoint():
    def fresh():
        return chunk_sampler(make_records(12))

    world = FakeWorld([0.1, 0.9, 0.5, 0.3, 0.7, 0.5, 0.2, 0.8, 0.6, 0.4, 0.5, 0.5])
    norms = lambda prompt_ids, accepted: [1.0] * len(prompt_ids)  # noqa: E731
    a = fresh()
    a.sample(seed_fn, world.generate, world.score, norms)
    import json
    state = json.loads(json.dumps({"sampler": a.state_dict(), "source": a.source.state_dict(),
                                   "allocator": a.allocator.state_dict()}))
    b = fresh()
    b.load_state_dict(state["sampler"])
    b.source.load_state_dict(state["source"])
    b.allocator.load_state_dict(state["allocator"])
    for _ in range(3):  # the rest of the chunk, then the next chunk's first step
        ga, ma = a.sample(seed_fn, world.generate, world.score, norms)
        gb, mb = b.sample(seed_fn, world.generate, world.score, norms)
        assert ma == mb
        assert [(g.record["id"], [c.token_ids for c in g.completions]) for g in ga] == \
               [(g.record["id"], [c.token_ids for c in g.completions]) for g in gb]


def test_gvm_exclude_solved_gives_always_solved_prompts_no_samples():
    world = FakeWorld([1.0, 0.5, 0.5, 0.5])
    s = chunk_sampler(make_records(4), every=1, exclude_solved=True)
    groups, _ = s.sample(seed_fn, world.generate, world.score, lambda p, a: [1.0] * len(p))
    assert "p0" not in {g.record["id"] for g in groups}
    assert s.allocator.stats["p0"].accept_rate == 1.0
    assert sum(len(g.completions) for g in groups) == 16


def test_a_chunk_plan_refuses_allocators_that_train_on_presamples_or_refill():
    with pytest.raises(ValueError, match="allocation.options.reuse_presamples: must be false"):
        GroupSampler(allocator("gvm"), None, Renderer(), 4, 4, every=2)
    with pytest.raises(ValueError, match="allocation.every: allocator 'dapo_filter' refills"):
        GroupSampler(allocator("dapo_filter"), None, Renderer(), 4, 4, every=2)
