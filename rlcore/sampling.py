"""One RL step's sampling: pre-sample, allocate the budget, generate, score, filter groups.

The allocator (algorithms/allocators.py) decides; this module only carries out its plan, so
uniform sampling, DAPO's over-generate-and-filter and GVM's pre-sampling pass share one loop.
Engines, scorers and learners come in as callables, which keeps the loop testable without Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rollout.engine import Completion, Request

GenerateFn = Callable[[list[Request]], list[Completion]]
ScoreFn = Callable[[list[dict], list[Completion]], list]
# (prompt ids per group, accepted completions per group) -> gradient norm per group
GradNormFn = Callable[[list[list[int]], list[list[Completion]]], list[float]]
SeedFn = Callable[[int, int], int]  # (prompt index, sample index) -> seed


def is_accepted(result) -> bool:
    """The verifier's verdict; rewards that give only a score count as accepted above 0.5."""
    return bool(result.correct) if result.correct is not None else float(result.score) > 0.5


@dataclass
class Group:
    """A prompt and its scored samples."""

    record: dict
    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)
    results: list = field(default_factory=list)
    next_sample: int = 0  # sample index of the next seed, so no two samples share one

    @property
    def scores(self) -> list[float]:
        return [float(r.score) for r in self.results]

    @property
    def accepted(self) -> int:
        return sum(is_accepted(r) for r in self.results)


def prompt_key(record: dict) -> str:
    """Stable identity of a prompt across visits (allocator statistics are keyed by it)."""
    return str(record.get("id") or record["prompt"])


@dataclass
class PlannedPrompt:
    """A prompt of a later step of the current chunk, with the samples allocated to it."""

    record: dict
    count: int
    next_sample: int


def chunk_plan_conflict(allocator, every: int, name: str | None = None) -> tuple[str, str] | None:
    """(config key, why) when `allocator` (`allocation.name` = `name`) cannot serve a chunk plan
    of `every` steps; None if it can."""
    if every < 1:
        return "allocation.every", f"must be >= 1 (steps per allocation chunk), got {every}"
    if every == 1:
        return None
    if allocator.max_rounds > 1:
        return ("allocation.every", f"allocator {name or allocator.name!r} refills each step over generation rounds, "
                "which a plan made for the whole chunk cannot hold; use every: 1")
    if allocator.reuse_presamples and allocator.presample_n:
        return ("allocation.options.reuse_presamples", f"must be false with allocation.every: {every}: the "
                "chunk's pre-samples come from the policy of its first step and would be trained on up to "
                f"{every - 1} policy versions later")
    return None


class GroupSampler:
    """Carries out the allocator's plan each step.

    With ``every > 1`` (``allocation.every``) the plan covers a chunk of that many steps, as in
    GVM-RAFT: the chunk's prompts are drawn and pre-sampled at its first step, the chunk's whole
    budget is allocated over them at once, and each step then generates its prompts' shares.
    """

    def __init__(self, allocator, source, renderer, prompts_per_step: int, n_samples: int, every: int = 1):
        conflict = chunk_plan_conflict(allocator, every)
        if conflict:
            raise ValueError(f"{conflict[0]}: {conflict[1]}")
        self.allocator = allocator
        self.source = source
        self.renderer = renderer
        self.prompts_per_step = prompts_per_step
        self.n_samples = n_samples
        self.every = every
        self.plan: list[list[PlannedPrompt]] = []  # the current chunk's later steps
        # The allocator's own settings: how many pre-samples a prompt without statistics gets.
        self.presample_n = allocator.presample_n
        self.reuse_presamples = allocator.reuse_presamples

    def state_dict(self) -> dict:
        return {"plan": [[vars(p) for p in step] for step in self.plan]}

    def load_state_dict(self, state: dict) -> None:
        self.plan = [[PlannedPrompt(**p) for p in step] for step in state.get("plan", [])]

    def sample(self, seed: SeedFn, generate: GenerateFn, score: ScoreFn,
               grad_norms: GradNormFn | None = None) -> tuple[list[Group], dict]:
        """Groups to train on (at most prompts_per_step) and sampling metrics."""
        self.allocator.start_step()
        if self.every > 1:
            return self._sample_planned(seed, generate, score, grad_norms)
        target = self.prompts_per_step
        kept: list[Group] = []
        generated = presampled = dropped_samples = rounds = 0
        sampled_counts: list[int] = []
        for rnd in range(max(1, self.allocator.max_rounds)):
            rounds += 1
            records = self.source.next_batch()
            groups = [Group(r, self.renderer.ids(r)) for r in records]
            offset = rnd * len(records)  # distinct seeds for prompts of later rounds
            made = self._presample(groups, offset, seed, generate, score, grad_norms)
            generated += made
            presampled += made
            keys = [prompt_key(g.record) for g in groups]
            counts = self.allocator.allocate(keys, len(groups) * self.n_samples)
            generated += self._fill(groups, counts, offset, seed, generate, score)
            round_kept = [g for g in groups if g.completions and self.allocator.keep_group(g.scores)]
            kept_ids = {id(g) for g in round_kept}
            dropped = [g for g in groups if id(g) not in kept_ids]
            dropped_samples += sum(len(g.completions) for g in dropped)
            sampled_counts += [len(g.completions) for g in groups]
            kept += round_kept
            if len(kept) >= target:
                break
        surplus = kept[target:]
        kept = kept[:target]
        wasted = dropped_samples + sum(len(g.completions) for g in surplus)
        if hasattr(self.allocator, "record_round"):
            self.allocator.record_round(generated, sum(len(g.completions) for g in kept), wasted)
        return kept, self._metrics(generated, presampled, wasted, rounds, len(kept), sampled_counts)

    def _sample_planned(self, seed, generate, score, grad_norms) -> tuple[list[Group], dict]:
        presampled = 0
        if not self.plan:
            presampled = self._plan_chunk(seed, generate, score, grad_norms)
        step = self.plan.pop(0)
        groups = [Group(p.record, self.renderer.ids(p.record), next_sample=p.next_sample) for p in step]
        counts = [p.count for p in step]
        generated = presampled + self._fill(groups, counts, 0, seed, generate, score)
        kept = [g for g in groups if g.completions]
        self.allocator.record_round(generated, sum(len(g.completions) for g in kept), 0)
        return kept, self._metrics(generated, presampled, 0, 1, len(kept), counts)

    def _plan_chunk(self, seed, generate, score, grad_norms) -> int:
        """Draw the chunk's prompts, pre-sample them, allocate the chunk's budget; returns pre-samples made."""
        batches = [self.source.next_batch() for _ in range(self.every)]
        groups = [Group(r, self.renderer.ids(r)) for batch in batches for r in batch]
        presampled = self._presample(groups, 0, seed, generate, score, grad_norms)
        counts = self.allocator.allocate([prompt_key(g.record) for g in groups], len(groups) * self.n_samples)
        planned = [PlannedPrompt(g.record, int(c), g.next_sample) for g, c in zip(groups, counts)]
        bounds = np.cumsum([0] + [len(b) for b in batches])
        self.plan = [planned[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return presampled

    @staticmethod
    def _metrics(generated, presampled, wasted, rounds, kept, sampled_counts) -> dict:
        return {
            "samples/step_generated": generated,
            "samples/step_presampled": presampled,
            "samples/wasted": wasted,
            "samples/rounds": rounds,
            "samples/groups_kept": kept,
            "samples/per_prompt_min": int(min(sampled_counts)),
            "samples/per_prompt_max": int(max(sampled_counts)),
            "samples/per_prompt_std": float(np.std(sampled_counts)),
        }

    def _presample(self, groups, offset, seed, generate, score, grad_norms) -> int:
        """Estimate acceptance rate (and gradient norm) for prompts the allocator knows nothing of."""
        need = self.allocator.needs_presample([prompt_key(g.record) for g in groups])
        todo = [i for i, flag in enumerate(need) if flag]
        if not todo or self.presample_n <= 0:
            return 0
        pre = [Group(groups[i].record, groups[i].prompt_ids) for i in todo]
        self._generate_into(pre, [self.presample_n] * len(pre), [offset + i for i in todo], seed, generate, score)
        norms = [None] * len(pre)
        if self.allocator.needs_grad_norm and grad_norms is not None:
            accepted = [[c for c, r in zip(g.completions, g.results) if is_accepted(r)] for g in pre]
            with_any = [k for k, a in enumerate(accepted) if a]
            if with_any:
                values = grad_norms([pre[k].prompt_ids for k in with_any], [accepted[k] for k in with_any])
                for k, v in zip(with_any, values):
                    norms[k] = float(v)
            for k, a in enumerate(accepted):
                if not a:
                    norms[k] = 0.0
        for g, norm in zip(pre, norms):
            self.allocator.observe(prompt_key(g.record), len(g.completions), g.accepted, norm)
        for i, g in zip(todo, pre):
            groups[i].next_sample = g.next_sample
            if self.reuse_presamples:
                groups[i].completions, groups[i].results = g.completions, g.results
        return sum(len(g.completions) for g in pre)

    def _fill(self, groups, counts, offset, seed, generate, score) -> int:
        """Top every group up to its allocated count."""
        extra = [max(0, int(c) - len(g.completions)) for g, c in zip(groups, counts)]
        fresh = [Group(g.record, g.prompt_ids, next_sample=g.next_sample) for g in groups]
        self._generate_into(fresh, extra, [offset + i for i in range(len(groups))], seed, generate, score)
        for g, f in zip(groups, fresh):
            g.next_sample = f.next_sample
            if f.completions:
                self.allocator.observe(prompt_key(g.record), len(f.completions), f.accepted, None)
            g.completions += f.completions
            g.results += f.results
        return sum(extra)

    @staticmethod
    def _generate_into(groups, counts, prompt_indices, seed, generate, score) -> None:
        requests, owners = [], []
        for k, (g, n, p) in enumerate(zip(groups, counts, prompt_indices)):
            for j in range(g.next_sample, g.next_sample + n):
                requests.append(Request(g.prompt_ids, seed(p, j)))
                owners.append(k)
            g.next_sample += n
        if not requests:
            return
        completions = generate(requests)
        results = score([groups[k].record for k in owners], completions)
        for k, c, r in zip(owners, completions, results):
            groups[k].completions.append(c)
            groups[k].results.append(r)
