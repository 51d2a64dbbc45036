"""rlcore: config, trainer loop, learners, checkpoints, tracking and the CLI.

The five-line entry point::

    import rlcore
    summary = rlcore.train("experiments/quickstart.yaml", overrides=["trainer.total_steps=20"])
"""
from __future__ import annotations


def train(config, overrides: list[str] | None = None, reward=None) -> dict:
    """Run one experiment (a YAML path, or an ExperimentConfig) and return its summary dict.

    `reward` may be a callable `(prompt, completion, ground_truth, metadata) -> float | dict`
    that replaces `reward.fn` (it is shipped to the reward workers by value).
    """
    from rlcore.config import ExperimentConfig, load_config
    from rlcore.trainer import Trainer

    cfg = config if isinstance(config, ExperimentConfig) else load_config(config, overrides)
    if isinstance(config, ExperimentConfig) and overrides:
        raise ValueError("overrides apply to YAML paths; edit the ExperimentConfig directly instead")
    return Trainer(cfg, reward=reward).run()


__all__ = ["train"]
