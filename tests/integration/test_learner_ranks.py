"""Two FSDP2 ranks (gloo, spawned processes, no Ray) whose shards give different numbers of
forward/backward passes (token-budget packing, skipped zero-advantage rows, uneven GVM groups):
nothing hangs, and loss, gradients and log-probs equal the single-process plain path."""
from __future__ import annotations

import queue
import traceback

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.unit.test_learner_fast_update import (
    HP,
    RTOL,
    _batch,
    _free_port,
    _learner_cfg,
    _learner_grads,
    _policy_batch,
    _reference_logp,
    _reference_step,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 300
TEMPERATURE = 0.8
GROUPS = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3]  # strided over 2 ranks: 3/2, 1/1, 2/2, 1/0 rows


def _rank_main(rank: int, port: int, cfg: dict, shards: list, full: dict, out) -> None:
    try:
        from rlcore.learner import LearnerWorker
        from rlcore.update import UpdateSettings

        torch.set_num_threads(1)
        learner = LearnerWorker(rank, 2, "127.0.0.1", port, cfg)
        result = {"logp": learner.compute_logprobs(shards[rank], TEMPERATURE, positions="loss")}
        result["metrics"] = learner.train(shards[rank], "policy", UpdateSettings(lr=0.0, skip_zero_advantage=True))
        result["grads"] = {k: v.numpy() for k, v in _learner_grads(learner).items()}  # full_tensor: collective
        result["gvm"] = learner.likelihood_grad_norms(full, GROUPS)
        learner.shutdown()
        out.put((rank, result))
    except BaseException:  # noqa: BLE001 - report to the parent instead of hanging it
        out.put((rank, traceback.format_exc()))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from rlcore.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("ranks") / "llama", arch="llama", seed=4,
                                hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128))


def _stack_rows(*batches: dict) -> dict:
    """Batches of different widths as one: [B, L] arrays right-padded to the widest, [B] joined."""
    width = max(b["input_ids"].shape[1] for b in batches)
    out = {}
    for key in batches[0]:
        parts = []
        for b in batches:
            arr = b[key]
            if arr.ndim == 2:
                extra = width - arr.shape[1] - (key not in ("input_ids", "attention_mask"))
                arr = np.pad(arr, ((0, 0), (0, extra)), constant_values=3 if key == "input_ids" else 0)
            parts.append(arr)
        out[key] = np.concatenate(parts)
    return out


def _reference_gvm_norms(plain, batch, groups) -> list[float]:
    """GVM's G_i in one process: per group, the gradient norm of its rows' token-mean NLL."""
    norms = []
    for g in sorted(set(groups)):
        idx = np.flatnonzero(np.asarray(groups) == g)
        part = {k: v[idx] for k, v in batch.items()}
        plain.zero_grad(set_to_none=True)
        logp, _ = _reference_logp(plain, part, 1.0)
        m = torch.from_numpy(part["loss_mask"])
        (-(logp * m).sum() / m.sum()).backward()
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in plain.parameters()]))))
    return norms


def test_two_ranks_with_different_pass_counts_match_one_process(model_dir):
    from rollout.model_io import load_causal_lm

    cfg = _learner_cfg(model_dir, num_ranks=2, micro_batch_tokens=24)
    # The loss settings the reference step gets below, as the learners read them: from the config.
    cfg["algorithm"].update(clip_low=HP["clip_low"], clip_high=HP["clip_high"], loss_agg="seq-mean-token-mean")
    cfg["rollout"].update(temperature=TEMPERATURE, max_new_tokens=HP["max_tokens"])
    plain, _ = load_causal_lm(model_dir, "float32", "cpu", cfg["model"]["attn_implementation"])
    # Rank 0: six long rows (each alone under a 24-token budget); rank 1: six short rows, four of
    # them with zero advantage (skipped), so rank 1 runs one pass to rank 0's six.
    long = _batch(seed=21, rows=6, prompt_lens=(14, 18), completion_lens=(6, 9))
    short = _batch(seed=22, rows=6, prompt_lens=(3, 5), completion_lens=(1, 4))
    rows = _stack_rows(long, short)
    batch = _policy_batch(plain, rows, TEMPERATURE, seed=8, zero_rows=(6, 7, 9, 11))
    shards = [{k: v[:6] for k, v in batch.items()}, {k: v[6:] for k, v in batch.items()}]

    results = _spawn_two_ranks(_rank_main, (_free_port(), cfg, shards, batch))

    hp = {**HP, "temperature": TEMPERATURE, "loss_agg": "seq-mean-token-mean"}
    ref_loss, ref_grads = _reference_step(plain, batch, "policy", hp)
    losses = [results[r]["metrics"]["train/loss"] for r in range(2)]
    assert sum(losses) == pytest.approx(ref_loss, rel=RTOL)  # what LearnerGroup reports
    for rank in range(2):
        for name, g in ref_grads.items():
            scale = float(g.abs().max()) or 1.0
            torch.testing.assert_close(torch.from_numpy(results[rank]["grads"][name]), g, rtol=RTOL,
                                       atol=RTOL * scale, msg=name)

    ref_logp, _ = _reference_logp(plain, batch, TEMPERATURE)
    mask = batch["loss_mask"] > 0
    ours = np.concatenate([results[0]["logp"], results[1]["logp"]])
    np.testing.assert_allclose(ours * mask, ref_logp.detach().numpy() * mask, rtol=RTOL, atol=1e-5)

    ref_norms = _reference_gvm_norms(plain, batch, GROUPS)
    for rank in range(2):
        np.testing.assert_allclose(results[rank]["gvm"], ref_norms, rtol=1e-4)


# GVM with rows-per-pass planning (micro_batch_size 2): group 0's five rows give rank 0 three rows
# (two passes) and rank 1 two rows (one pass); group 1's three rows give 2 / 1 rows, one pass each.
GVM_GROUPS = [0, 0, 0, 0, 0, 1, 1, 1]
VALUE_CLIP = 0.2


def _uneven_rank_main(rank: int, ports: tuple, cfgs: tuple, gvm_batch: dict, shards: list, out) -> None:
    try:
        from rlcore.critic import CriticWorker
        from rlcore.learner import LearnerWorker
        from rlcore.update import UpdateSettings

        torch.set_num_threads(1)
        learner = LearnerWorker(rank, 2, "127.0.0.1", ports[0], cfgs[0])
        result = {"gvm": learner.likelihood_grad_norms(gvm_batch, GVM_GROUPS)}
        learner.shutdown()
        critic = CriticWorker(rank, 2, "127.0.0.1", ports[1], cfgs[1])
        result["values"] = critic.compute_values(shards[rank])
        result["critic"] = critic.train_values(shards[rank], UpdateSettings(lr=0.0))
        critic.shutdown()
        out.put((rank, result))
    except BaseException:  # noqa: BLE001 - report to the parent instead of hanging it
        out.put((rank, traceback.format_exc()))


def _spawn_two_ranks(target, args: tuple) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, *args, out), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(2):
            rank, res = out.get(timeout=TIMEOUT_S)
            assert not isinstance(res, str), f"rank {rank} failed:\n{res}"
            results[rank] = res
    except queue.Empty:
        pytest.fail(f"ranks did not finish within {TIMEOUT_S}s (a collective mismatch hangs)")
    finally:
        for p in procs:
            p.join(timeout=30 if len(results) == 2 else 1)
            if p.is_alive():
                p.kill()
    return results


def test_gvm_norms_and_the_critic_with_uneven_passes_on_two_ranks(model_dir):
    """GVM's strided row shares and the critic's token-budget plan give the two ranks different
    numbers of forward/backward passes: nothing hangs, GVM's norms are the single-process ones,
    and the critic's logged loss (reduced over ranks as LearnerGroup does) is the value loss."""
    from types import SimpleNamespace

    from algorithms.ppo import value_loss
    from rlcore.critic import CriticWorker
    from rlcore.groups import reduce_rank_metrics
    from rollout.model_io import load_causal_lm

    gvm_cfg = _learner_cfg(model_dir, num_ranks=2, micro_batch_size=2, micro_batch_tokens=0)
    critic_cfg = _learner_cfg(model_dir, num_ranks=2, micro_batch_tokens=24)
    critic_cfg["critic"]["value_clip"] = VALUE_CLIP
    gvm_batch = _batch(seed=23, rows=len(GVM_GROUPS))
    # Critic shards: rank 0 six long rows (one pass each under 24 tokens), rank 1 six short ones
    # (several rows per pass): the ranks' plans have different lengths.
    long = _batch(seed=24, rows=6, prompt_lens=(14, 18), completion_lens=(6, 9))
    short = _batch(seed=25, rows=6, prompt_lens=(3, 5), completion_lens=(1, 4))
    batch = _stack_rows(long, short)
    rng = np.random.default_rng(26)
    mask = batch["loss_mask"]
    batch["old_values"] = (rng.normal(0, 0.3, mask.shape) * mask).astype(np.float32)
    batch["returns"] = (rng.normal(0, 1, mask.shape) * mask).astype(np.float32)
    shards = [{k: v[:6] for k, v in batch.items()}, {k: v[6:] for k, v in batch.items()}]

    results = _spawn_two_ranks(_uneven_rank_main, ((_free_port(), _free_port()), (gvm_cfg, critic_cfg),
                                                   gvm_batch, shards))

    plain, _ = load_causal_lm(model_dir, "float32", "cpu", gvm_cfg["model"]["attn_implementation"])
    ref_norms = _reference_gvm_norms(plain, gvm_batch, GVM_GROUPS)
    for rank in range(2):
        np.testing.assert_allclose(results[rank]["gvm"], ref_norms, rtol=1e-4)

    # The critic as its ranks built it: same seed, then the same head initialisation.
    torch.manual_seed(critic_cfg["seed"])
    from rlcore.config import config_from_dict

    value_model, _ = CriticWorker._load_model(SimpleNamespace(device=torch.device("cpu")),
                                              config_from_dict(critic_cfg).model)
    ids, att = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    values = value_model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1, 0].float()
    ours = np.concatenate([results[0]["values"], results[1]["values"]])
    np.testing.assert_allclose(ours, (values * att[:, 1:]).detach().numpy(), rtol=RTOL, atol=1e-5)
    loss, _ = value_loss(values, torch.from_numpy(batch["old_values"]), torch.from_numpy(batch["returns"]),
                         torch.from_numpy(mask).float(), clip=VALUE_CLIP)
    loss.backward()
    ref_grad_norm = float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in value_model.parameters()])))
    logged = reduce_rank_metrics([results[0]["critic"], results[1]["critic"]])
    assert logged["critic/vf_loss"] == pytest.approx(float(loss.detach()), rel=RTOL)
    assert logged["critic/vf_grad_norm"] == pytest.approx(ref_grad_norm, rel=1e-4)
