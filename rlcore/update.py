"""From scored groups to the arrays the learners train on: log-probs, KL, advantages, values.

Which of these are computed is decided by the algorithm's spec (algorithms/registry.py), never
by the algorithm's name, so a newly registered algorithm needs no change here.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import asdict, fields

import numpy as np
import torch

from algorithms import get_advantage, kl_penalty
from algorithms.off_policy import truncated_is_weights
from algorithms.ppo import gae_advantages, outcome_token_rewards, whiten
from rlcore.batch import build_batch, pad_rows, select_rows
from rlcore.config import ExperimentConfig
from rlcore.sampling import is_accepted


class UpdateBuilder:
    def __init__(self, cfg: ExperimentConfig, spec, pad_id: int):
        self.cfg, self.spec, self.pad_id = cfg, spec, pad_id
        self.advantage_fn = get_advantage(spec.advantage) if not spec.needs_critic else None
        algo = cfg.algorithm
        accepted = inspect.signature(self.advantage_fn).parameters if self.advantage_fn else {}
        options = {f.name: getattr(algo, f.name) for f in fields(algo)}
        self.advantage_kwargs = {k: v for k, v in options.items() if k in accepted}
        if "eps" in accepted:
            self.advantage_kwargs["eps"] = algo.adv_eps
        self.wants_correct = "correct" in accepted
        lc = cfg.learner
        multiple = lc.num_ranks * lc.mini_batches
        if spec.needs_critic:
            multiple = math.lcm(multiple, cfg.critic.num_ranks * lc.mini_batches)
        self.row_multiple = multiple

    def hparams(self) -> dict:
        """Everything the policy loss may read (PolicyLossInput fields and `options`)."""
        algo, rc = self.cfg.algorithm, self.cfg.rollout
        hp = {k: v for k, v in asdict(algo).items() if isinstance(v, (int, float, str, bool)) or v is None}
        hp.update(temperature=rc.temperature, loss_agg=algo.loss_agg, max_tokens=rc.max_new_tokens)
        if algo.kl_mode == "reward":
            hp["kl_coef"] = 0.0  # the penalty is already in the rewards
        hp["skip_zero_advantage"] = self.skips_zero_advantage()
        hp["tis_cap"] = rc.tis_cap if self.tis_in_learner() else None
        return hp

    def tis_in_learner(self) -> bool:
        """Asynchronous single-pass updates take the TIS weights from the training forward itself
        (the learner's log-probs before its only optimiser step), saving a whole forward pass.
        Multi-pass updates, and algorithms that need pi_old here anyway, weight in build()."""
        cfg, spec = self.cfg, self.spec
        if cfg.rollout.max_staleness == 0:
            return False
        multi_pass = cfg.learner.mini_batches > 1 or cfg.learner.epochs > 1
        kl_in_reward = spec.needs_reference and cfg.algorithm.kl_mode == "reward"
        return not (multi_pass or (spec.needs_old_logprobs and (kl_in_reward or spec.needs_critic)))

    def skips_zero_advantage(self) -> bool:
        """The learners may skip rows whose advantages are all zero: the spec says their loss is
        exactly zero and no KL loss term is active (they still count in the normalisers)."""
        algo = self.cfg.algorithm
        kl_loss = algo.kl_mode == "loss" and algo.kl_coef > 0
        return self.spec.zero_advantage_has_zero_loss and not kl_loss

    def build(self, groups, learners, critic=None) -> tuple[dict | None, dict]:
        """The padded learner batch (None if no sample carries signal) and its metrics."""
        cfg, spec, algo = self.cfg, self.spec, self.cfg.algorithm
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
        kl_in_reward = spec.needs_reference and algo.kl_mode == "reward"
        # Off-policy weights need the learner's own log-probs, unless the learner takes them itself.
        weight_here = cfg.rollout.max_staleness > 0 and not self.tis_in_learner()
        if weight_here or (spec.needs_old_logprobs and (multi_pass or kl_in_reward or spec.needs_critic)):
            batch["old_logp"] = learners.compute_logprobs(batch, temperature, positions="loss")
        if spec.needs_reference:
            batch["ref_logp"] = learners.compute_logprobs(batch, temperature, reference=True, positions="loss")

        rewards = torch.tensor([float(r.score) for r in results], dtype=torch.float32)
        penalty = torch.zeros_like(mask)
        metrics: dict[str, float] = {}
        if kl_in_reward:
            policy_logp = batch.get("old_logp", batch["rollout_logp"])[:n]
            penalty = kl_penalty(torch.from_numpy(policy_logp), torch.from_numpy(batch["ref_logp"][:n]), mask,
                                 algo.kl_coef, algo.kl_estimator)
            metrics["reward/kl_penalty_mean"] = float(penalty.sum(-1).mean())

        token_adv = np.zeros_like(batch["loss_mask"])
        if spec.needs_critic:
            values = critic.compute_values(batch)
            token_rewards = outcome_token_rewards(rewards, mask) - penalty
            adv, returns = gae_advantages(token_rewards, torch.from_numpy(values[:n]), mask, algo.gamma, algo.lam)
            if algo.whiten_advantages:
                adv = whiten(adv, mask)
            token_adv[:n] = adv.numpy()
            batch["returns"] = np.zeros_like(token_adv)
            batch["returns"][:n] = returns.numpy()
            batch["old_values"] = values
            seq_adv = (adv * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        else:
            scores = rewards - penalty.sum(-1)
            kwargs = dict(self.advantage_kwargs)
            if self.wants_correct:
                kwargs["correct"] = torch.tensor([is_accepted(r) for r in results])
            out = self.advantage_fn(scores, torch.tensor(owners), **kwargs)
            per_sample = out if isinstance(out, dict) else {"advantages": out}
            seq_adv = per_sample["advantages"].float()
            token_adv[:n] = (seq_adv[:, None] * mask).numpy()
            for name, value in per_sample.items():
                if name != "advantages":
                    extra = np.zeros_like(batch["loss_mask"])
                    extra[:n] = (value.float()[:, None] * mask).numpy()
                    batch[f"extra/{name}"] = extra
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
        if not keep.all():
            batch = pad_rows(select_rows(batch, np.flatnonzero(keep)), self.row_multiple)
        if self.skips_zero_advantage():
            # The learners skip these rows' forward/backward (LearnerWorker._rows_to_run).
            live = batch["loss_mask"].any(axis=1)
            metrics["samples/skipped_zero_adv"] = int((live & ~batch["advantages"].any(axis=1)).sum())
        return batch, metrics
