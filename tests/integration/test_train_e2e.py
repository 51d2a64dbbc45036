"""End to end on the real stack: local Ray, the vLLM CPU engine, a 2-rank FSDP2 group on gloo."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rlcore.tracking import read_metrics
from rlcore.engine_sync import LogprobMismatchError
from rlcore.trainer import Trainer

pytestmark = pytest.mark.integration

DETERMINISTIC_PREFIXES = ("reward/mean", "reward/accuracy", "response/", "train/", "samples/", "sync/")


def parity_reward(prompt, completion, ground_truth, metadata):
    """Varies within every group even for an untrained model, so GRPO has a gradient."""
    return float(len(completion) % 2)


def test_grpo_steps_with_weight_sync_and_logprob_check(ray_cluster, make_config):
    cfg = make_config()
    summary = Trainer(cfg, reward=parity_reward).run()
    assert summary["steps"] == 2
    for key in ("wall_time_s", "eval_accuracy_first", "eval_accuracy_last"):
        assert summary[key] is not None
    rows = read_metrics(cfg.run_dir)
    steps = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        # Rollout (vLLM) and learner (FSDP) agree on the same tokens after every sync.
        assert row["sync/logprob_diff_max"] < 1e-3
        assert row["train/rollout_logp_diff_max"] < 1e-3
        for key in ("time/generate_s", "time/reward_s", "time/update_s", "time/sync_s", "time/sync_gather_s",
                    "time/sync_load_s", "time/sync_total_s", "throughput/gen_tokens_per_s"):
            assert row[key] > 0
        assert row["train/grad_norm"] > 0
    assert (cfg.run_dir / "checkpoints" / "step_2" / "model" / "model.safetensors").is_file()
    assert (cfg.run_dir / "learning_curve.png").stat().st_size > 1000
    assert json.loads((cfg.run_dir / "summary.json").read_text())["steps"] == 2
    assert (cfg.run_dir / "samples" / "step_1.jsonl").is_file()


def test_mismatch_threshold_stops_the_run(ray_cluster, make_config):
    cfg = make_config(trainer__logprob_mismatch_threshold=-1.0, sft__steps=0, learner__num_ranks=1)
    with pytest.raises(LogprobMismatchError, match="after weight sync"):
        Trainer(cfg).run()


@pytest.mark.parametrize("kl_coef", [0.0, 0.05], ids=["no_kl", "kl_to_sft_reference"])
def test_resume_is_exact(ray_cluster, make_config, kl_coef):
    common = dict(trainer__checkpoint_every=2, eval__every=0, algorithm__kl_coef=kl_coef)
    straight = make_config(name="straight", trainer__total_steps=4, **common)
    Trainer(straight).run()

    split = make_config(name="split", trainer__total_steps=2, **common)
    Trainer(split).run()
    resumed = make_config(name="split", trainer__total_steps=4, resume="latest", **common)
    Trainer(resumed).run()

    def comparable(run_dir):
        rows = {}
        for row in read_metrics(run_dir):
            keep = {k: v for k, v in row.items() if k.startswith(DETERMINISTIC_PREFIXES) and not k.startswith("time/")}
            rows.setdefault(row["step"], {}).update(keep)
        return rows

    a, b = comparable(straight.run_dir), comparable(split.run_dir)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4]
    for step in a:
        assert a[step] == b[step], f"step {step} differs after resume"
    # The split run also evaluated at its interim end (step 2); start and final evals must agree.
    evals = lambda run_dir: {r["step"]: r["eval/accuracy"] for r in read_metrics(run_dir) if "eval/accuracy" in r}  # noqa: E731
    ea, eb = evals(straight.run_dir), evals(split.run_dir)
    assert ea[0] == eb[0] and ea[4] == eb[4]
    # The split run's step-2 checkpoint was replaced by the resumed run's later ones.
    assert (split.run_dir / "checkpoints" / "step_4").is_dir()


def test_no_eval_set_logs_no_eval_metrics(ray_cluster, make_config, tmp_path):
    """data.task: file without eval_path or benchmarks: nothing to evaluate, so no eval/ keys
    (an accuracy of NaN before)."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(40)))
    cfg = make_config(data={"task": "file", "train_path": str(data)}, learner__num_ranks=1, sft__steps=0,
                      trainer__total_steps=1)
    summary = Trainer(cfg, reward=parity_reward).run()
    assert summary["steps"] == 1 and summary["eval_accuracy_last"] is None
    rows = read_metrics(cfg.run_dir)
    assert rows and not any(k.startswith("eval/") for r in rows for k in r)


def test_hf_engine_path(ray_cluster, make_config):
    cfg = make_config(rollout__engine="hf", learner__num_ranks=1, trainer__total_steps=1, sft__steps=0)
    summary = Trainer(cfg).run()
    assert summary["steps"] == 1
    row = [r for r in read_metrics(cfg.run_dir) if "reward/mean" in r][0]
    assert row["sync/logprob_diff_max"] < 1e-3


def test_logprob_check_detects_unsynced_weights(ray_cluster, tiny_model, make_config):
    """The sync check measures something real: engine weights that differ are caught."""
    import ray

    from rlcore import topology
    from rlcore.groups import LearnerGroup, RolloutGroup

    cfg = make_config(learner__num_ranks=1)
    rollout = RolloutGroup(topology.create_rollout_group(cfg))
    learners = LearnerGroup(*topology.create_learner_group(cfg))
    try:
        seqs = [[1, 5, 6, 7, 8, 9, 2], [1, 10, 11, 12, 2]]
        ref = learners.gather_weights()
        weights = ray.get(ref)
        rng = np.random.default_rng(0)
        noisy = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in weights.items()}
        rollout.update_weights(ray.put(noisy), 1)
        theirs, ours = rollout.sequence_logprobs(seqs)[0], learners.sequence_logprobs(seqs)
        assert max(np.abs(np.array(a) - np.array(b)).max() for a, b in zip(ours, theirs)) > 1e-2
        rollout.update_weights(ref, 2)
        theirs = rollout.sequence_logprobs(seqs)[0]
        assert max(np.abs(np.array(a) - np.array(b)).max() for a, b in zip(ours, theirs)) < 1e-4
        # Weights without the tied LM head are refused before they reach the engine.
        partial = {k: v for k, v in weights.items() if k != "lm_head.weight"}
        with pytest.raises(ray.exceptions.RayTaskError, match="lm_head.weight"):
            rollout.update_weights(ray.put(partial), 3)
    finally:
        topology.shutdown_group(rollout.workers)
        topology.shutdown_group(learners.workers, learners.placement)
