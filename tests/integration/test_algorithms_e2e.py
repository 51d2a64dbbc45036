"""Every algorithm family and allocator on the real stack: Ray, vLLM (CPU), FSDP2 on gloo."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rlcore.trainer import Trainer


def parity_reward(prompt, completion, ground_truth, metadata):
    """Accepts about half the samples even for an untrained model (score > 0.5 = accepted)."""
    return float(len(completion) % 2)

pytestmark = pytest.mark.integration


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_ppo_trains_a_critic_group_and_resumes_it_exactly(ray_cluster, make_config):
    common = dict(algorithm__name="ppo", critic__num_ranks=1, critic__micro_batch_size=4, learner__mini_batches=2)
    straight = make_config(name="ppo_straight", trainer__total_steps=3, **common)
    summary = Trainer(straight).run()
    assert summary["steps"] == 3
    steps = [r for r in rows(straight.run_dir) if r["step"] > 0 and "critic/vf_loss" in r]
    assert len(steps) == 3
    for r in steps:
        assert np.isfinite(r["critic/vf_loss"]) and np.isfinite(r["train/loss"])
        assert 0.0 <= r["critic/vf_clipfrac"] <= 1.0
    # The critic learns: from a random head, its loss goes down over the steps. Returns are the 0/1
    # outcome rewards (gamma = lam = 1), so the loss is compared above 0.5 Var(R) = 0.5 m (1 - m)
    # (m: the return mean), the least a constant prediction can reach: a change in the reward rate
    # between steps does not move the comparison.
    def excess_loss(r):
        m = r["critic/return_mean"]
        return r["critic/vf_loss"] - 0.5 * m * (1.0 - m)

    assert excess_loss(steps[-1]) < excess_loss(steps[0]), [(r["critic/vf_loss"], r["critic/return_mean"])
                                                             for r in steps]
    ckpt = straight.run_dir / "checkpoints" / "step_3"
    assert (ckpt / "critic").is_dir() and (ckpt / "critic_model" / "config.json").is_file()

    split = make_config(name="ppo_split", trainer__total_steps=2, **common)
    Trainer(split).run()
    resumed = make_config(name="ppo_split", trainer__total_steps=3, resume="latest", **common)
    Trainer(resumed).run()
    a = [r for r in rows(straight.run_dir) if r["step"] == 3 and "critic/vf_loss" in r][0]
    b = [r for r in rows(split.run_dir) if r["step"] == 3 and "critic/vf_loss" in r][0]
    for key in ("critic/vf_loss", "train/loss", "reward/mean", "advantage/abs_mean"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def run_with_gvm(make_config, algorithm: str, **overrides):
    """Two steps of `algorithm` under GVM allocation: 4 prompts x 6 samples, 2 pre-samples each."""
    cfg = make_config(
        name=f"{algorithm}_gvm", algorithm__name=algorithm, rollout__n_samples=6,
        allocation={"name": "gvm", "options": {"presample_n": 2, "min_samples": 2, "max_samples": 12}}, **overrides,
    )
    Trainer(cfg, reward=parity_reward).run()
    steps = [r for r in rows(cfg.run_dir) if r["step"] > 0 and "samples/step_generated" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["samples/step_generated"] == 24  # pre-samples included (they are reused)
        assert r["samples/per_prompt_min"] >= 2 and r["samples/per_prompt_max"] <= 12
    return cfg, steps


def test_raftpp_with_gvm_allocation_spends_the_budget_and_drops_rejected_samples(ray_cluster, make_config):
    cfg, steps = run_with_gvm(make_config, "raftpp")
    for r in steps:  # RAFT++ trains on accepted samples only.
        assert r["samples/trained"] == round(r["reward/mean"] * 24)
    state = json.loads((cfg.run_dir / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    stats = state["allocator"]["stats"]
    assert len(stats) >= 4 and any(s["grad_norm"] for s in stats.values())


def test_nft_with_gvm_allocation_trains_on_uneven_groups(ray_cluster, make_config):
    # The issue: GVM works with GRPO, RAFT++ and NFT. GVM gives prompts different group sizes.
    _, steps = run_with_gvm(make_config, "nft", learner__num_ranks=1)
    assert any(r["samples/per_prompt_std"] > 0 for r in steps)  # allocation was not uniform
    # It trains on the uneven groups: parity rewards make some groups varied (informative), so
    # some step trains on rows, and every step that trains has a finite loss.
    trained = [r for r in steps if r["samples/trained"] > 0]
    assert trained, steps
    for r in trained:
        assert np.isfinite(r["train/loss"])


def test_gvm_chunk_plan_spans_steps_and_resumes_exactly_mid_chunk(ray_cluster, make_config):
    """allocation.every: 2 pre-samples and allocates two steps' prompts at once; a checkpoint
    between them carries the plan, so the resumed run serves the same prompts and counts."""
    common = dict(
        algorithm__name="grpo", rollout__n_samples=6, learner__num_ranks=1, eval__every=0,
        trainer__checkpoint_every=1,
        allocation={"name": "gvm", "every": 2,
                    "options": {"presample_n": 2, "min_samples": 0, "max_samples": 12, "reuse_presamples": False}},
    )
    straight = make_config(name="chunk_straight", trainer__total_steps=3, **common)
    Trainer(straight, reward=parity_reward).run()
    split = make_config(name="chunk_split", trainer__total_steps=1, **common)
    Trainer(split, reward=parity_reward).run()
    Trainer(make_config(name="chunk_split", trainer__total_steps=3, resume="latest", **common),
            reward=parity_reward).run()

    def steps(run_dir):
        return {r["step"]: {k: v for k, v in r.items() if k.startswith(("samples/", "reward/mean", "train/loss"))}
                for r in rows(run_dir) if r["step"] > 0 and "samples/step_generated" in r}

    a, b = steps(straight.run_dir), steps(split.run_dir)
    assert sorted(a) == [1, 2, 3] and a == b
    # Steps 1 and 3 start chunks (4 prompts x 2 steps x 2 pre-samples); step 2 only spends its share.
    assert [a[s]["samples/step_presampled"] for s in (1, 2, 3)] == [16, 0, 16]
    plan = sum(a[s]["samples/step_generated"] - a[s]["samples/step_presampled"] for s in (1, 2))
    assert plan == 2 * 4 * 6  # the chunk's budget, however it was split between its steps


def test_nft_with_dapo_filter_and_kl_as_reward_penalty(ray_cluster, make_config):
    cfg = make_config(
        name="nft", algorithm={"name": "nft", "kl_coef": 0.01, "kl_mode": "reward"},
        allocation={"name": "dapo_filter", "options": {"max_rounds": 3}}, learner__num_ranks=1,
    )
    Trainer(cfg, reward=parity_reward).run()
    steps = [r for r in rows(cfg.run_dir) if r["step"] > 0 and "samples/rounds" in r]
    assert len(steps) == 2
    for r in steps:
        assert 1 <= r["samples/rounds"] <= 3
        assert r["samples/step_generated"] == 16 * r["samples/rounds"]
        assert r["samples/wasted"] == r["samples/step_generated"] - 4 * r["samples/groups_kept"]
        assert "reward/kl_penalty_mean" in r
    kept = [r for r in steps if r["samples/groups_kept"] > 0]
    assert kept, steps  # the filter kept varied groups, and the steps with them trained
    for r in kept:
        assert np.isfinite(r["train/loss"])
