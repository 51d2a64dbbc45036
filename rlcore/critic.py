"""CriticWorker: one rank of PPO's value model, an FSDP2 group of its own.

Why a separate group rather than a value head on the policy: the critic gets its own learning
rate, optimizer and checkpoint, and on a cluster its own GPUs, without touching the policy's
forward pass (the OpenRLHF / verl layout). It starts from the policy's weights with a fresh
one-output token-classification head (`AutoModelForTokenClassification`, `num_labels=1`), so
any Hugging Face decoder works as a critic.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from algorithms.ppo import value_loss
from rlcore.learner import LearnerWorker
from rollout.model_io import pick_attn_implementation


class CriticWorker(LearnerWorker):
    checkpoint_subdir = "critic"
    hf_subdir = "critic_model"

    def _load_model(self, mcfg: dict):
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(mcfg["path"], trust_remote_code=mcfg["trust_remote_code"])
        config = AutoConfig.from_pretrained(mcfg["path"], num_labels=1, trust_remote_code=mcfg["trust_remote_code"])
        config.classifier_dropout = 0.0  # dropout would make values noisy and resume inexact
        model = AutoModelForTokenClassification.from_pretrained(
            mcfg["path"], config=config, dtype=torch.float32,
            attn_implementation=pick_attn_implementation(mcfg["attn_implementation"], str(self.device)),
            trust_remote_code=mcfg["trust_remote_code"],
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

    @torch.no_grad()
    def compute_values(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.model.eval()
        out = np.zeros(batch["input_ids"][:, 1:].shape, dtype=np.float32)
        row = 0
        for mb in self._micro_batches(batch, np.arange(len(batch["input_ids"]))):
            values = self._values(mb) * mb["attention_mask"][:, 1:]
            n, w = values.shape
            out[row : row + n, :w] = values.cpu().numpy()
            row += n
        return out

    def train_values(self, batch: dict[str, np.ndarray], hparams: dict) -> dict[str, float]:
        """Regress values on `returns` (clipped around `old_values`), epochs x mini-batches."""
        t0 = time.perf_counter()
        self.model.train()
        n = len(batch["input_ids"])
        minis = np.array_split(np.arange(n), hparams.get("mini_batches", 1))
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(hparams.get("epochs", 1)):
            for mini in minis:
                mask_all = batch["loss_mask"][mini]
                tokens = self._global_sum(float(mask_all.sum()))
                self.optimizer.zero_grad(set_to_none=True)
                sums: dict[str, float] = {}
                for mb in self._micro_batches(batch, mini):
                    mask = mb["loss_mask"].float()
                    loss, metrics = value_loss(
                        self._values(mb), mb["old_values"], mb["returns"], mask,
                        clip=hparams.get("value_clip"), agg_mode="token-mean", token_normalizer=tokens,
                    )
                    (loss * self.world_size).backward()
                    w = float(mask.sum()) / max(tokens, 1.0) * self.world_size
                    # Ranks hold parts of the global loss; scaled so that the rank average is the total.
                    sums["vf_loss"] = sums.get("vf_loss", 0.0) + float(loss.detach()) * self.world_size
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v) * w
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["learner"]["grad_clip"])
                grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                self.optimizer.step()
                sums["vf_grad_norm"] = float(grad_norm)
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + v
                steps += 1
        out = {f"critic/{k}": v / steps for k, v in totals.items()}
        out["time/critic_update_rank_s"] = time.perf_counter() - t0
        return out
