"""CriticWorker: one rank of PPO's value model, an FSDP2 group of its own.

Why a separate group rather than a value head on the policy: the critic gets its own learning
rate, optimizer and checkpoint, and on a cluster its own GPUs, without touching the policy's
forward pass (the OpenRLHF / verl layout). It starts from the policy's weights with a fresh
one-output token-classification head (`AutoModelForTokenClassification`, `num_labels=1`), so
any Hugging Face decoder works as a critic.

Training runs through the policy learner's loop (`LearnerWorker._train_steps` /
`_accumulate_step`): the same micro-batch plan, pass-count agreement between ranks, gradient
accumulation, clipping and metric reduction, with the value loss as the per-micro-batch loss.
"""
from __future__ import annotations

import time
from dataclasses import fields, replace

import numpy as np
import torch

from algorithms.ppo import value_loss
from rlcore.config import CriticConfig, ExperimentConfig, LearnerConfig, ModelConfig
from rlcore.learner import LearnerWorker
from rlcore.update import UpdateSettings
from rollout.model_io import pick_attn_implementation


class CriticWorker(LearnerWorker):
    checkpoint_subdir = "critic"
    hf_subdir = "critic_model"

    @staticmethod
    def rank_settings(cfg: ExperimentConfig) -> LearnerConfig:
        """The learner's settings with the `critic:` section's own (ranks, resources, lr, ...)."""
        shared = {f.name for f in fields(LearnerConfig)} & {f.name for f in fields(CriticConfig)}
        return replace(cfg.learner, **{name: getattr(cfg.critic, name) for name in shared})

    def _load_model(self, mcfg: ModelConfig):
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(mcfg.path, trust_remote_code=mcfg.trust_remote_code)
        config = AutoConfig.from_pretrained(mcfg.path, num_labels=1, trust_remote_code=mcfg.trust_remote_code)
        config.classifier_dropout = 0.0  # dropout would make values noisy and resume inexact
        model = AutoModelForTokenClassification.from_pretrained(
            mcfg.path, config=config, dtype=torch.float32,
            attn_implementation=pick_attn_implementation(mcfg.attn_implementation, str(self.device), mcfg.dtype),
            trust_remote_code=mcfg.trust_remote_code,
        ).to(self.device)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    def _values(self, mb: dict) -> torch.Tensor:
        # Position t of the [B, L-1] arrays scores token t+1; its state is the prefix up to t.
        out = self.model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], use_cache=False)
        return out.logits[:, :-1, 0].float()

    def _filler_output(self) -> torch.Tensor:
        return self._values(self._filler()).sum()

    @torch.no_grad()
    def compute_values(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.model.eval()
        out = np.zeros(batch["input_ids"][:, 1:].shape, dtype=np.float32)
        plan = self._plan(batch, np.arange(len(batch["input_ids"])))
        for k in range(self._agree(len(plan))):  # each pass is a collective: ranks agree on the count
            if k >= len(plan):
                self._filler_output()
                continue
            mb = self._to_tensors(batch, plan[k])
            values = self._values(mb) * mb["attention_mask"][:, 1:]
            out[plan[k], : values.shape[1]] = values.cpu().numpy()
        return out

    def train_values(self, batch: dict[str, np.ndarray], settings: UpdateSettings) -> dict[str, float]:
        """Regress values on `returns` (clipped around `old_values`), epochs x mini-batches.

        "critic/vf_loss" is the value loss (token mean over the mini-batch, all ranks), averaged
        over optimizer steps; "critic/vf_grad_norm" the gradient norm before clipping.
        """
        t0 = time.perf_counter()
        self._set_lr(settings.lr)
        clip = self.cfg.critic.value_clip

        def step(indices: np.ndarray) -> dict[str, float]:
            tokens = self._global_sum(float(batch["loss_mask"][indices].sum()))

            def micro_loss(mb: dict[str, torch.Tensor]):
                mask = mb["loss_mask"].float()
                loss, metrics = value_loss(self._values(mb), mb["old_values"], mb["returns"], mask,
                                           clip=clip, agg_mode="token-mean", token_normalizer=tokens)
                del metrics["vf_loss"]  # the loop sums the loss itself (global normaliser)
                return loss, metrics, float(mask.sum())

            return self._accumulate_step(batch, indices, micro_loss)

        metrics = self._train_steps(batch, settings, step)
        # This rank's part of the loss, times the world size: LearnerGroup averages critic metrics
        # over ranks, and the average of the scaled parts is their sum, the loss.
        metrics["vf_loss"] = metrics.pop("loss") * self.world_size
        metrics["vf_grad_norm"] = metrics.pop("grad_norm")
        out = {f"critic/{k}": v for k, v in metrics.items()}
        out["time/critic_update_rank_s"] = time.perf_counter() - t0
        return out
