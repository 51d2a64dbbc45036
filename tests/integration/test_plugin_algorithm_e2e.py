"""An algorithm from a file outside the package, named by path in a config, trains on the real
stack (Ray, vLLM, FSDP2): the driver and the learners each load it from the path."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlcore.config import load_config
from rlcore.tracking import read_metrics
from rlcore.trainer import Trainer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch_baseline.yaml"


def length_reward(prompt, completion, ground_truth, metadata):
    """Varies between samples (the barely trained tiny model solves nothing), so there is a
    gradient and the learners run the example's loss."""
    return len(completion) / 10.0


def test_out_of_tree_algorithm_from_a_config_trains_two_steps(ray_cluster, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file path in the config is relative to the config, not here
    cfg = load_config(EXAMPLE, [
        f"model.path={tiny_model}", "model.build_tiny=false", f"output_dir={tmp_path / 'runs'}",
        "data.n_train=400", "data.n_eval=16", "sft.steps=3", "sft.batch_size=16",
        "rollout.prompts_per_step=4", "rollout.n_samples=4", "rollout.max_new_tokens=8",
        "learner.micro_batch_size=8", "eval.every=0", "eval.num_prompts=16", "trainer.total_steps=2",
        "trainer.checkpoint_every=0", "tracking.progress=false", "tracking.tensorboard=false",
    ])
    assert cfg.algorithm.name == f"{EXAMPLE.parent / 'algorithms' / 'batch_baseline.py'}:BATCH_BASELINE"
    assert type(cfg.algorithm.options).__name__ == "BatchBaselineOptions" and cfg.algorithm.options.scale_by_std

    summary = Trainer(cfg, reward=length_reward).run()

    assert summary["steps"] == 2
    rows = [r for r in read_metrics(cfg.run_dir) if "reward/mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # The batch-mean baseline centres the advantages over the whole batch, not per prompt.
        assert abs(row["advantage/mean"]) < 1e-5
        # The learners ran the example's loss (-A log p: it reports pg_loss and no clip fraction).
        assert row["reward/std"] > 0 and row["advantage/abs_mean"] > 0
        assert "train/pg_loss" in row and "train/clipfrac" not in row
        assert row["train/grad_norm"] > 0
