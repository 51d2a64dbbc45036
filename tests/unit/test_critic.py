"""PPO's critic (world size 1, in-process) trains through the policy learner's loop: the logged
value loss, its metrics and its gradient are those of the value loss computed by hand over the
whole mini-batch, whatever the micro-batch layout."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rlcore.update import UpdateSettings
from tests.unit.test_learner_fast_update import LAYOUTS, RTOL, _batch, _free_port, _learner_cfg, layout

CLIP = 0.2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlcore.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("critic") / "llama", arch="llama", seed=5,
                                hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                intermediate_size=128))


@pytest.fixture(scope="module")
def critic(model_dir):
    from rlcore.critic import CriticWorker

    worker = CriticWorker(0, 1, "127.0.0.1", _free_port(), _learner_cfg(model_dir))
    worker.cfg = dataclasses.replace(worker.cfg, critic=dataclasses.replace(worker.cfg.critic, value_clip=CLIP))
    yield worker
    worker.shutdown()


def _plain_values(critic, batch) -> torch.Tensor:
    """One forward over the whole batch: values [B, L-1] (zero beyond each row's length)."""
    ids = torch.from_numpy(batch["input_ids"])
    att = torch.from_numpy(batch["attention_mask"])
    return critic._values({"input_ids": ids, "attention_mask": att}) * att[:, 1:]


def _value_batch(critic, seed: int):
    """A batch whose old values are the critic's own plus noise (some clipped), random returns."""
    rng = np.random.default_rng(seed)
    batch = _batch(seed=seed)
    with torch.no_grad():
        values = _plain_values(critic, batch).numpy()
    mask = batch["loss_mask"]
    batch["old_values"] = ((values + rng.normal(0, 0.3, values.shape)) * mask).astype(np.float32)
    batch["returns"] = (rng.normal(0, 1, values.shape) * mask).astype(np.float32)
    return batch, values


def _by_hand(values, batch, rows=None):
    """Clipped value loss 0.5 max((v - R)^2, (v_clip - R)^2), token mean over `rows`, and metrics."""
    rows = np.arange(len(values)) if rows is None else rows
    v = values[rows].astype(np.float64)
    old, ret = batch["old_values"][rows], batch["returns"][rows]
    mask = batch["loss_mask"][rows].astype(np.float64)
    v_clip = old + np.clip(v - old, -CLIP, CLIP)
    err, err_clip = (v - ret) ** 2, (v_clip - ret) ** 2
    n = mask.sum()
    return {
        "critic/vf_loss": float((0.5 * np.maximum(err, err_clip) * mask).sum() / n),
        "critic/vf_clipfrac": float(((err_clip > err) * mask).sum() / n),
        "critic/value_mean": float((v * mask).sum() / n),
        "critic/return_mean": float((ret * mask).sum() / n),
    }


def _train(critic, batch, lr=0.0, mini_batches=1, epochs=1):
    """train_values with lr 0 by default (the weights stay put, so every step sees the same
    values); the value clip is the critic's config, critic.value_clip = CLIP. The lr is set on
    the optimizer, not by reset_optimizer: after a no-grad forward FSDP2 leaves the root module
    unsharded, and a new optimizer would hold its unsharded parameters."""
    assert critic.cfg.critic.value_clip == CLIP
    return critic.train_values(batch, UpdateSettings(lr=lr, mini_batches=mini_batches, epochs=epochs))


def _with_layout(critic, settings: dict, fn):
    with layout(critic, **settings):
        return fn()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_logged_value_loss_and_metrics_are_the_value_loss_by_hand(critic, layout):
    batch, values = _value_batch(critic, seed=31)
    expected = _by_hand(values, batch)
    assert 0 < expected["critic/vf_clipfrac"] < 1  # both branches of the clip occur
    metrics = _with_layout(critic, LAYOUTS[layout], lambda: _train(critic, batch))
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=RTOL, abs=1e-7), key


def test_value_loss_over_mini_batches_and_epochs_is_their_mean(critic):
    batch, values = _value_batch(critic, seed=32)
    halves = np.array_split(np.arange(len(values)), 2)
    expected = np.mean([_by_hand(values, batch, rows)["critic/vf_loss"] for rows in halves])
    metrics = _with_layout(critic, LAYOUTS["tokens40"], lambda: _train(critic, batch, mini_batches=2, epochs=2))
    assert metrics["critic/vf_loss"] == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("layout", ["rows3", "tokens1"])
def test_accumulated_gradient_is_the_full_batch_gradient(critic, layout):
    batch, _ = _value_batch(critic, seed=33)
    metrics = _with_layout(critic, LAYOUTS[layout], lambda: _train(critic, batch))
    ours = {n: p.grad.full_tensor().clone() if hasattr(p.grad, "full_tensor") else p.grad.clone()
            for n, p in critic.model.named_parameters()}

    from algorithms.ppo import value_loss

    critic.optimizer.zero_grad(set_to_none=True)
    t = {k: torch.from_numpy(batch[k]) for k in ("old_values", "returns", "loss_mask", "attention_mask")}
    ids = torch.from_numpy(batch["input_ids"])
    values = critic._values({"input_ids": ids, "attention_mask": t["attention_mask"]})
    loss, _ = value_loss(values, t["old_values"], t["returns"], t["loss_mask"].float(), clip=CLIP)
    loss.backward()
    assert metrics["critic/vf_loss"] == pytest.approx(float(loss.detach()), rel=RTOL)
    norm = torch.nn.utils.clip_grad_norm_(critic.model.parameters(), float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    assert metrics["critic/vf_grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    for name, p in critic.model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        scale = float(g.abs().max()) or 1.0
        torch.testing.assert_close(ours[name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_compute_values_match_one_forward_in_every_layout(critic):
    batch = _batch(seed=34)
    with torch.no_grad():
        ref = _plain_values(critic, batch).numpy()
    for layout in LAYOUTS.values():
        got = _with_layout(critic, layout, lambda: critic.compute_values(batch))
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=1e-5)


def test_critic_learns_the_returns_of_a_fixed_batch(critic):
    batch, _ = _value_batch(critic, seed=35)
    batch["returns"] = batch["loss_mask"].astype(np.float32)  # return 1 on every trained token
    saved = critic.cfg
    critic.cfg = dataclasses.replace(saved, critic=dataclasses.replace(saved.critic, value_clip=None))
    try:
        losses = [critic.train_values(batch, UpdateSettings(lr=3e-3))["critic/vf_loss"] for _ in range(8)]
    finally:
        critic.cfg = saved
    assert losses[-1] < 0.5 * losses[0], losses
