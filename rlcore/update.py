"""From scored groups to the arrays the learners train on: log-probs, KL, advantages, values.

Which of these are computed is decided by the algorithm's flags (algorithms/contract.py), never
by its name, so a new algorithm needs no change here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from algorithms import AdvantageInput, Algorithm, kl_penalty
from algorithms.aggregation import PROMPT_MODES, prompt_token_weights
from algorithms.contract import spread
from algorithms.off_policy import truncated_is_weights
from rlcore.batch import build_batch, pad_rows, select_rows
from rlcore.config import ExperimentConfig
from rlcore.sampling import is_accepted


def uses_reference(cfg: ExperimentConfig) -> bool:
    """A frozen reference policy exists exactly when there is a KL term (loss or reward)."""
    return cfg.algorithm.kl_coef > 0


def kl_loss_coef(cfg: ExperimentConfig) -> float:
    """The KL coefficient of the loss: 0 when the penalty is in the rewards instead."""
    return cfg.algorithm.kl_coef if cfg.algorithm.kl_mode == "loss" else 0.0


@dataclass(frozen=True)
class UpdateSettings:
    """How one update runs, decided by the driver; every loss setting (clips, KL, aggregation,
    temperature) the learners read from the typed config they hold."""

    lr: float
    mini_batches: int = 1
    epochs: int = 1
    skip_zero_advantage: bool = False  # rows with A = 0 add exactly nothing: do not run them
    tis_cap: float | None = None  # asynchronous single pass: TIS weights from the training forward


class UpdateBuilder:
    def __init__(self, cfg: ExperimentConfig, algorithm: Algorithm, pad_id: int):
        self.cfg, self.algorithm, self.pad_id = cfg, algorithm, pad_id
        lc = cfg.learner
        multiple = lc.num_ranks * lc.mini_batches
        if algorithm.needs_critic:
            multiple = math.lcm(multiple, cfg.critic.num_ranks * lc.mini_batches)
        self.row_multiple = multiple

    def settings(self, lr: float) -> UpdateSettings:
        """This step's policy (and critic) update: `lr` from the schedule, the rest from the config
        and the algorithm's flags."""
        lc = self.cfg.learner
        return UpdateSettings(lr=lr, mini_batches=lc.mini_batches, epochs=lc.epochs,
                              skip_zero_advantage=self.skips_zero_advantage(),
                              tis_cap=self.cfg.rollout.tis_cap if self.tis_in_learner() else None)

    def tis_in_learner(self) -> bool:
        """Asynchronous single-pass updates take the TIS weights from the training forward itself
        (the learner's log-probs before its only optimiser step), saving a whole forward pass.
        Multi-pass updates, and algorithms that need pi_old here anyway, weight in build()."""
        cfg, spec = self.cfg, self.algorithm
        if cfg.rollout.max_staleness == 0:
            return False
        multi_pass = cfg.learner.mini_batches > 1 or cfg.learner.epochs > 1
        kl_in_reward = uses_reference(cfg) and cfg.algorithm.kl_mode == "reward"
        return not (multi_pass or (spec.needs_old_logprobs and (kl_in_reward or spec.needs_critic)))

    def skips_zero_advantage(self) -> bool:
        """The learners may skip rows whose advantages are all zero: the spec says their loss is
        exactly zero and no KL loss term is active (they still count in the normalisers)."""
        return self.algorithm.zero_advantage_has_zero_loss and kl_loss_coef(self.cfg) == 0

    def build(self, groups, learners, critic=None) -> tuple[dict | None, dict]:
        """The padded learner batch (None if no sample carries signal) and its metrics."""
        cfg, spec, algo = self.cfg, self.algorithm, self.cfg.algorithm
        prompts, completions, results, owners = [], [], [], []
        for gi, g in enumerate(groups):
            for c, r in zip(g.completions, g.results):
                prompts.append(g.prompt_ids)
                completions.append(c)
                results.append(r)
                owners.append(gi)
        n = len(completions)
        # Tool-integrated trajectories carry a mask: interpreter output is not the policy's.
        masks = [getattr(c, "mask", None) for c in completions]
        batch = build_batch(prompts, [c.token_ids for c in completions], self.pad_id,
                            rollout_logprobs=[c.logprobs for c in completions],
                            response_masks=masks if any(m is not None for m in masks) else None)
        batch = pad_rows(batch, self.row_multiple)
        mask = torch.from_numpy(batch["loss_mask"][:n])
        temperature = cfg.rollout.temperature
        multi_pass = cfg.learner.mini_batches > 1 or cfg.learner.epochs > 1
        kl_in_reward = uses_reference(cfg) and algo.kl_mode == "reward"
        # Off-policy weights need the learner's own log-probs, unless the learner takes them itself.
        weight_here = cfg.rollout.max_staleness > 0 and not self.tis_in_learner()
        if weight_here or (spec.needs_old_logprobs and (multi_pass or kl_in_reward or spec.needs_critic)):
            batch["old_logp"] = learners.compute_logprobs(batch, temperature, positions="loss")
        if uses_reference(cfg):
            batch["ref_logp"] = learners.compute_logprobs(batch, temperature, reference=True, positions="loss")

        rewards = torch.tensor([float(r.score) for r in results], dtype=torch.float32)
        penalty = torch.zeros_like(mask)
        metrics: dict[str, float] = {}
        if kl_in_reward:
            policy_logp = batch.get("old_logp", batch["rollout_logp"])[:n]
            penalty = kl_penalty(torch.from_numpy(policy_logp), torch.from_numpy(batch["ref_logp"][:n]), mask,
                                 algo.kl_coef, algo.kl_estimator)
            metrics["reward/kl_penalty_mean"] = float(penalty.sum(-1).mean())

        values = None
        if spec.needs_critic:
            batch["old_values"] = critic.compute_values(batch)
            values = torch.from_numpy(batch["old_values"][:n])
        out = spec.advantages(AdvantageInput(
            rewards=rewards, group_index=torch.tensor(owners), mask=mask, token_penalty=penalty, values=values,
            correct=torch.tensor([is_accepted(r) for r in results], dtype=torch.bool),
        ), algo.options)
        token_adv = np.zeros_like(batch["loss_mask"])
        token_adv[:n] = out.token_advantages(mask).numpy()
        seq_adv = out.sequence_advantages(mask)
        if out.returns is not None:
            batch["returns"] = np.zeros_like(token_adv)
            batch["returns"][:n] = (out.returns.float() * mask).numpy()
        elif spec.needs_critic:
            raise ValueError(f"algorithm {spec.name!r} has a critic but its advantages returned no returns")
        for name, value in out.extras.items():
            batch[f"extra/{name}"] = np.zeros_like(batch["loss_mask"])
            batch[f"extra/{name}"][:n] = spread(value, mask).numpy()
        if weight_here:
            weights, is_metrics = truncated_is_weights(torch.from_numpy(batch["old_logp"][:n]),
                                                       torch.from_numpy(batch["rollout_logp"][:n]), mask,
                                                       cfg.rollout.tis_cap)
            token_adv[:n] *= weights.numpy()
            metrics.update(is_metrics)
        batch["advantages"] = token_adv
        metrics.update({"advantage/mean": float(seq_adv.mean()), "advantage/abs_mean": float(seq_adv.abs().mean()),
                        "advantage/zero_frac": float((seq_adv == 0).float().mean())})

        keep = np.zeros(len(batch["loss_mask"]), dtype=bool)
        keep[:n] = True
        if spec.drop_zero_advantage:
            keep[:n] = seq_adv.numpy() != 0
        metrics["samples/trained"] = int(keep.sum())
        if not keep.any():
            return None, metrics
        if algo.loss_agg in PROMPT_MODES:  # over the rows that stay: each prompt weighs the same
            batch["token_weight"] = np.zeros_like(batch["loss_mask"])
            kept = mask * torch.from_numpy(keep[:n].astype(np.float32))[:, None]
            batch["token_weight"][:n] = prompt_token_weights(kept, torch.tensor(owners), algo.loss_agg).numpy()
        if not keep.all():
            batch = pad_rows(select_rows(batch, np.flatnonzero(keep)), self.row_multiple)
        if self.skips_zero_advantage():
            # The learners skip these rows' forward/backward (LearnerWorker._rows_to_run).
            live = batch["loss_mask"].any(axis=1)
            metrics["samples/skipped_zero_adv"] = int((live & ~batch["advantages"].any(axis=1)).sum())
        return batch, metrics
