"""Session fixtures for integration tests: one local Ray cluster and one tiny model."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from rlcore.topology import local_runtime_env

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env=local_runtime_env())
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from rlcore.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture
def make_config(tiny_model, tmp_path):
    """A small, fast experiment on the tiny model; keyword overrides as dotted keys."""
    from rlcore.config import config_from_dict

    def make(**overrides):
        raw = {
            "name": "it", "seed": 1, "output_dir": str(tmp_path / "runs"),
            "model": {"path": tiny_model},
            "data": {"task": "arith", "n_train": 400, "n_eval": 16},
            "sft": {"steps": 3, "batch_size": 16},
            "rollout": {"engine": "vllm", "prompts_per_step": 4, "n_samples": 4, "max_new_tokens": 8},
            "learner": {"num_ranks": 2, "micro_batch_size": 4, "lr": 1e-3},
            "eval": {"every": 2, "num_prompts": 16},
            "trainer": {"total_steps": 2, "checkpoint_every": 0},
            "tracking": {"progress": False, "tensorboard": False},
        }
        for key, value in overrides.items():
            node = raw
            *parents, leaf = key.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return config_from_dict(raw)

    return make
