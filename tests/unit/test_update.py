"""UpdateBuilder turns scored groups into the learner batch the algorithm's spec asks for."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms import get_algorithm, grpo_advantages
from rewards.schema import RewardResult
from rlcore.config import config_from_dict
from rlcore.sampling import Group
from rlcore.update import UpdateBuilder, kl_loss_coef
from rollout.engine import Completion


class FakeLearners:
    """Stands in for LearnerGroup / the critic group: fixed log-probs and values."""

    def __init__(self):
        self.calls = []

    def compute_logprobs(self, batch, temperature, reference=False, positions="all"):
        self.calls.append(("ref" if reference else "old", len(batch["input_ids"])))
        return np.full(batch["loss_mask"].shape, -1.0 if reference else -0.5, dtype=np.float32)

    def compute_values(self, batch):
        self.calls.append(("values", len(batch["input_ids"])))
        return np.full(batch["loss_mask"].shape, 0.25, dtype=np.float32) * batch["attention_mask"][:, 1:]


def cfg(**algorithm):
    return config_from_dict({
        "model": {"path": "x"}, "learner": {"num_ranks": 2},
        "rollout": {"prompts_per_step": 2, "n_samples": 3}, "algorithm": algorithm,
    })


def groups(scores):
    out = []
    for gi, group_scores in enumerate(scores):
        g = Group({"id": f"p{gi}", "prompt": "q", "answer": "1"}, [5, 6])
        for k, s in enumerate(group_scores):
            g.completions.append(Completion([7] * (k + 1), [-0.5] * (k + 1), "stop"))
            g.results.append(RewardResult(score=s, correct=s > 0.5))
        out.append(g)
    return out


def build(c, scores, critic=None):
    spec = get_algorithm(c.algorithm.name)
    learners = FakeLearners()
    batch, metrics = UpdateBuilder(c, spec, pad_id=0).build(groups(scores), learners, critic)
    return batch, metrics, learners


def test_grpo_batch_broadcasts_group_advantages_and_pads_to_the_ranks():
    c = cfg(name="grpo")
    batch, metrics, learners = build(c, [[1, 0, 0], [1, 1, 0]])
    assert len(batch["input_ids"]) == 6 and learners.calls == []  # on-policy: no extra forward
    expected = grpo_advantages(torch.tensor([1.0, 0, 0, 1, 1, 0]), torch.tensor([0, 0, 0, 1, 1, 1]), eps=1e-6)
    per_row = batch["advantages"].sum(1) / batch["loss_mask"].sum(1)
    np.testing.assert_allclose(per_row, expected.numpy(), rtol=1e-6)
    assert metrics["samples/trained"] == 6


def test_raft_drops_rejected_rows_then_pads_with_loss_free_rows():
    batch, metrics, _ = build(cfg(name="raft"), [[1, 0, 0], [1, 1, 0]])
    assert metrics["samples/trained"] == 3
    assert len(batch["input_ids"]) == 4  # 3 accepted rows + 1 padding row for 2 ranks
    assert batch["loss_mask"].sum(1).tolist()[-1] == 0
    assert (batch["advantages"][:3].sum(1) > 0).all()


def test_raft_with_nothing_accepted_skips_the_update():
    batch, metrics, _ = build(cfg(name="raft"), [[0, 0, 0], [0, 0, 0]])
    assert batch is None and metrics["samples/trained"] == 0


def test_nft_passes_its_per_sample_extras_and_drops_uninformative_groups():
    batch, metrics, _ = build(cfg(name="nft"), [[1, 0, 0], [1, 1, 1]])
    assert metrics["samples/trained"] == 3  # the all-correct group carries no NFT signal
    for key in ("extra/nft_r_hat", "extra/nft_positive", "extra/nft_weight"):
        assert key in batch
    r_hat = batch["extra/nft_r_hat"][:3].sum(1) / batch["loss_mask"][:3].sum(1)
    np.testing.assert_allclose(r_hat, [1 / 3] * 3, rtol=1e-6)


def test_kl_as_reward_penalty_lowers_scores_and_turns_off_the_kl_loss():
    c = cfg(name="grpo", kl_coef=0.1, kl_mode="reward", kl_estimator="k1")
    batch, metrics, learners = build(c, [[1, 0, 0], [1, 1, 0]])
    assert ("ref", 6) in learners.calls and ("old", 6) in learners.calls
    # k1 = logp - ref = 0.5 per token; the penalty per sequence is 0.1 * 0.5 * length.
    lengths = np.array([1, 2, 3, 1, 2, 3])
    assert metrics["reward/kl_penalty_mean"] == pytest.approx(float(np.mean(0.05 * lengths)))
    assert kl_loss_coef(c) == 0.0 and kl_loss_coef(cfg(name="grpo", kl_coef=0.1)) == 0.1


def test_ppo_uses_critic_values_for_gae_and_keeps_returns_for_the_critic():
    c = cfg(name="ppo", options={"whiten_advantages": False})
    critic = FakeLearners()
    batch, _, learners = build(c, [[1, 0, 0], [1, 1, 0]], critic=critic)
    assert ("values", 6) in critic.calls
    mask = batch["loss_mask"] > 0
    # gamma = lam = 1 and outcome reward on the last token: A_t = R - V_t, returns = R.
    scores = np.array([1, 0, 0, 1, 1, 0], dtype=np.float32)
    for i in range(6):
        np.testing.assert_allclose(batch["advantages"][i][mask[i]], scores[i] - 0.25, rtol=1e-6)
        np.testing.assert_allclose(batch["returns"][i][mask[i]], scores[i], rtol=1e-6)
    assert "old_values" in batch and "old_logp" in batch
