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

        torch.set_num_threads(1)
        learner = LearnerWorker(rank, 2, "127.0.0.1", port, cfg)
        result = {"logp": learner.compute_logprobs(shards[rank], TEMPERATURE, positions="loss")}
        hp = {**HP, "temperature": TEMPERATURE, "loss_agg": "seq-mean-token-mean", "skip_zero_advantage": True,
              "lr": 0.0, "mini_batches": 1, "epochs": 1}
        result["metrics"] = learner.train(shards[rank], "clipped", hp)
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


def test_two_ranks_with_different_pass_counts_match_one_process(model_dir):
    from rollout.model_io import load_causal_lm

    cfg = _learner_cfg(model_dir, num_ranks=2, micro_batch_tokens=24)
    plain, _ = load_causal_lm(model_dir, "float32", "cpu", cfg["model"]["attn_implementation"])
    # Rank 0: six long rows (each alone under a 24-token budget); rank 1: six short rows, four of
    # them with zero advantage (skipped), so rank 1 runs one pass to rank 0's six.
    long = _batch(seed=21, rows=6, prompt_lens=(14, 18), completion_lens=(6, 9))
    short = _batch(seed=22, rows=6, prompt_lens=(3, 5), completion_lens=(1, 4))
    width = max(long["input_ids"].shape[1], short["input_ids"].shape[1])
    rows = {}
    for key in long:
        pad = [np.pad(b[key], ((0, 0), (0, width - (b[key].shape[1] + (key not in ("input_ids", "attention_mask"))))),
                      constant_values=3 if key == "input_ids" else 0) for b in (long, short)]
        rows[key] = np.concatenate(pad)
    batch = _policy_batch(plain, rows, TEMPERATURE, seed=8, zero_rows=(6, 7, 9, 11))
    shards = [{k: v[:6] for k, v in batch.items()}, {k: v[6:] for k, v in batch.items()}]

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, cfg, shards, batch, out), daemon=True) for r in range(2)]
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

    hp = {**HP, "temperature": TEMPERATURE, "loss_agg": "seq-mean-token-mean"}
    ref_loss, ref_grads = _reference_step(plain, batch, "clipped", hp)
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

    ref_norms = []
    for g in sorted(set(GROUPS)):
        idx = np.flatnonzero(np.asarray(GROUPS) == g)
        part = {k: v[idx] for k, v in batch.items()}
        plain.zero_grad(set_to_none=True)
        logp, _ = _reference_logp(plain, part, 1.0)
        m = torch.from_numpy(part["loss_mask"])
        (-(logp * m).sum() / m.sum()).backward()
        ref_norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in plain.parameters()]))))
    for rank in range(2):
        np.testing.assert_allclose(results[rank]["gvm"], ref_norms, rtol=1e-4)
