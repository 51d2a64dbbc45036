"""LearnerWorker: one rank of the FSDP2 policy group (gloo on CPU, NCCL on GPU).

Every public method is a collective: the driver calls it on all ranks with each rank's shard of
the batch, and all ranks run the same number of forward/backward passes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from algorithms import PolicyLossInput, aggregate, get_policy_loss
from rollout.model_io import DTYPES, load_causal_lm


class LearnerWorker:
    checkpoint_subdir = "learner"  # DCP shards, under the step's checkpoint directory
    hf_subdir = "model"  # the HF model directory next to them
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, cfg: dict):
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        lcfg = cfg["learner"]
        on_gpu = lcfg["gpus_per_rank"] > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        backend = lcfg["backend"] if lcfg["backend"] != "auto" else ("nccl" if on_gpu else "gloo")
        if lcfg["num_threads"] > 0:
            torch.set_num_threads(lcfg["num_threads"])
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        # Binding the rank to its GPU lets NCCL set up communicators eagerly and keeps
        # barrier() from guessing the device.
        bind = {"device_id": self.device} if on_gpu else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size, **bind)
        torch.manual_seed(cfg["seed"])

        mcfg = cfg["model"]
        self.model, self.tokenizer = self._load_model(mcfg)
        if lcfg["gradient_checkpointing"]:
            self.model.gradient_checkpointing_enable()
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        self._shard(self.model, DTYPES[mcfg["dtype"]])
        self.ref_model = None
        self.optimizer = self._make_optimizer(lcfg["lr"])

    # ------------------------------------------------------------------ setup

    def _load_model(self, mcfg: dict):
        # Master weights stay fp32; bf16/fp16 is a compute dtype applied by FSDP's policy.
        return load_causal_lm(
            mcfg["path"], "float32", str(self.device), mcfg["attn_implementation"], mcfg["trust_remote_code"]
        )

    def _shard(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if compute_dtype != torch.float32:
            mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": mp} if mp else {}
        for layer in _decoder_layers(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)

    def _make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        lcfg = self.cfg["learner"]
        return torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=tuple(lcfg["betas"]), weight_decay=lcfg["weight_decay"]
        )

    def reset_optimizer(self, lr: float) -> None:
        """Fresh AdamW moments (e.g. between SFT warm-up and RL, which use different scales)."""
        self.optimizer = self._make_optimizer(lr)

    def enable_reference(self, path: str) -> None:
        """Freeze the model at `path` (the post-SFT policy the trainer saved) as the KL reference."""
        mcfg = self.cfg["model"]
        ref, _ = load_causal_lm(path, "float32", str(self.device), mcfg["attn_implementation"])
        ref.requires_grad_(False)
        self._shard(ref, DTYPES[mcfg["dtype"]])
        self.ref_model = ref.eval()

    def ping(self) -> int:
        return self.rank

    # -------------------------------------------------------------- forward

    def _logprobs(self, model, input_ids, attention_mask, temperature: float, with_entropy: bool = False):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        logits = logits.float()
        if temperature not in (0.0, 1.0):
            logits = logits / temperature
        targets = input_ids[:, 1:]
        lse = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        entropy = None
        if with_entropy:
            with torch.no_grad():
                probs = torch.softmax(logits, dim=-1)
                entropy = lse - (probs * logits).sum(-1)
        return logp, entropy

    def _micro_batches(self, batch: dict[str, np.ndarray], indices: np.ndarray):
        """Yield micro-batches as tensors, trimmed to their longest row (right padding)."""
        size = self.cfg["learner"]["micro_batch_size"]
        for start in range(0, len(indices), size):
            idx = indices[start : start + size]
            width = int(batch["attention_mask"][idx].sum(1).max())
            mb = {}
            for key, arr in batch.items():
                part = arr[idx]
                if part.ndim == 2:
                    part = part[:, : width if key in ("input_ids", "attention_mask") else width - 1]
                mb[key] = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)
            yield mb

    @torch.no_grad()
    def compute_logprobs(self, batch: dict[str, np.ndarray], temperature: float = 1.0, reference: bool = False):
        """Per-token log-probs [B, L-1] (zero beyond each row's length)."""
        model = self.ref_model if reference else self.model
        model.eval()
        out = np.zeros(batch["input_ids"][:, 1:].shape, dtype=np.float32)
        indices = np.arange(len(batch["input_ids"]))
        row = 0
        for mb in self._micro_batches(batch, indices):
            logp, _ = self._logprobs(model, mb["input_ids"], mb["attention_mask"], temperature)
            n, w = logp.shape
            out[row : row + n, :w] = (logp * mb["attention_mask"][:, 1:]).cpu().numpy()
            row += n
        return out

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        width = max(len(s) for s in sequences)
        ids = np.zeros((len(sequences), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, s in enumerate(sequences):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        lp = self.compute_logprobs({"input_ids": ids, "attention_mask": mask})
        return [lp[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]

    # ------------------------------------------------------------------ train

    def train(self, batch: dict[str, np.ndarray], loss: str, hparams: dict) -> dict[str, float]:
        """One RL or SFT step over this rank's shard: epochs x mini-batches x micro-batches.

        `loss` is "sft" (mean NLL on loss_mask tokens) or a registered policy loss name.
        Normalisers are global over ranks so that gradient accumulation and data parallelism
        reproduce the full-batch loss exactly.
        """
        t0 = time.perf_counter()
        lcfg = self.cfg["learner"]
        for group in self.optimizer.param_groups:
            group["lr"] = hparams.get("lr", lcfg["lr"])
        self.model.train()
        n = len(batch["input_ids"])
        minis = np.array_split(np.arange(n), hparams.get("mini_batches", lcfg["mini_batches"]))
        totals: dict[str, float] = {}
        count = 0
        for _ in range(hparams.get("epochs", lcfg["epochs"])):
            for mini in minis:
                metrics = self._optimizer_step(batch, mini, loss, hparams)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
        out = {f"train/{k}": v / count for k, v in totals.items()}
        out["time/update_rank_s"] = time.perf_counter() - t0
        return out

    def _global_sum(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def _optimizer_step(self, batch, indices, loss: str, hparams: dict) -> dict[str, float]:
        mask_all = batch["loss_mask"][indices]
        tokens = self._global_sum(float(mask_all.sum()))
        seqs = self._global_sum(float((mask_all.sum(1) > 0).sum()))
        # FSDP averages gradients over ranks; scale so the sum over ranks is the global loss.
        scale = float(self.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        weights = 0.0
        temperature = hparams.get("temperature", 1.0)
        for mb in self._micro_batches(batch, indices):
            mask = mb["loss_mask"].float()
            logp, entropy = self._logprobs(
                self.model, mb["input_ids"], mb["attention_mask"], temperature, with_entropy=True
            )
            if loss == "sft":
                value = aggregate(-logp, mask, "token-mean", token_normalizer=tokens)
                metrics = {"nll": float((-logp.detach() * mask).sum() / mask.sum().clamp(min=1))}
            else:
                out = get_policy_loss(loss)(
                    PolicyLossInput(
                        logp=logp,
                        old_logp=mb["old_logp"] if "old_logp" in mb else logp.detach(),
                        advantages=mb["advantages"],
                        mask=mask,
                        ref_logp=mb.get("ref_logp"),
                        clip_low=hparams["clip_low"],
                        clip_high=hparams["clip_high"],
                        dual_clip_c=hparams.get("dual_clip_c"),
                        kl_coef=hparams.get("kl_coef", 0.0),
                        kl_estimator=hparams.get("kl_estimator", "k3"),
                        agg_mode=hparams.get("loss_agg", "token-mean"),
                        token_normalizer=tokens,
                        seq_normalizer=seqs,
                        max_tokens=hparams.get("max_tokens"),
                        extras={k[6:]: v for k, v in mb.items() if k.startswith("extra/")},
                        options=hparams,
                    )
                )
                value, metrics = out.loss, dict(out.metrics)
                if "rollout_logp" in mb:
                    diff = (logp.detach() - mb["rollout_logp"]).abs() * mask
                    metrics["rollout_logp_diff_max"] = float(diff.max())
            (value * scale).backward()
            w = float(mask.sum())
            weights += w
            metrics["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
            # Micro-batch losses use global normalisers, so their sum (over ranks too) is the loss.
            sums["loss"] = sums.get("loss", 0.0) + float(value.detach())
            for k, v in metrics.items():
                if k.endswith("_max"):
                    sums[k] = max(sums.get(k, -np.inf), v)
                else:
                    sums[k] = sums.get(k, 0.0) + v * w
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["learner"]["grad_clip"])
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optimizer.step()
        result = {k: (v if (k.endswith("_max") or k == "loss") else v / max(weights, 1.0)) for k, v in sums.items()}
        result["grad_norm"] = float(grad_norm)
        return result

    def likelihood_grad_norms(self, batch: dict[str, np.ndarray], group_ids: list[int]) -> list[float]:
        """Per group: norm of the gradient of its rows' token-mean log-likelihood (GVM's G_i).

        Every rank sees the whole batch and takes a strided share of each group's rows, so each
        backward is one collective over the same group; FSDP's gradient average is undone by
        scaling with the world size, as in `train`. Parameters are not updated.
        """
        self.model.train()
        groups = np.asarray(group_ids)
        norms = []
        for g in sorted(set(group_ids)):
            rows = np.flatnonzero(groups == g)
            tokens = float(batch["loss_mask"][rows].sum())
            mine = rows[self.rank :: self.world_size]
            weight = 1.0 if len(mine) else 0.0  # a rank without rows joins the collectives at zero
            self.optimizer.zero_grad(set_to_none=True)
            for mb in self._micro_batches(batch, mine if len(mine) else rows[:1]):
                mask = mb["loss_mask"].float() * weight
                logp, _ = self._logprobs(self.model, mb["input_ids"], mb["attention_mask"], 1.0)
                loss = -(logp * mask).sum() / max(tokens, 1.0)
                (loss * self.world_size).backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            norms.append(float(norm))
        self.optimizer.zero_grad(set_to_none=True)
        return norms

    # ----------------------------------------------------------- weights / ckpt

    def _full_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def gather_weights(self) -> dict[str, np.ndarray] | None:
        """Full fp32 weights as numpy (zero-copy through Ray's object store) on rank 0."""
        state = self._full_state()
        if self.rank != 0:
            return None
        weights = {k: v.detach().float().numpy() for k, v in state.items()}
        if self.tied and "lm_head.weight" not in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        return weights

    def save_checkpoint(self, path: str) -> None:
        """DCP shards (model + optimizer) for exact resume, plus an HF model dir on rank 0."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(path) / self.checkpoint_subdir))
        self.save_hf_model(str(Path(path) / self.hf_subdir))

    def save_hf_model(self, path: str) -> None:
        """A plain HF model directory (loadable by vLLM or from_pretrained), written by rank 0."""
        state = self._full_state()
        if self.rank == 0:
            from safetensors.torch import save_file

            out = Path(path)
            out.mkdir(parents=True, exist_ok=True)
            # Shared tensors (tied head) are stored once, as save_pretrained does.
            if self.tied:
                state.pop("lm_head.weight", None)
            save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
            self.model.config.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            gen_cfg = getattr(self.model, "generation_config", None)
            if gen_cfg is not None:
                gen_cfg.save_pretrained(out)
        dist.barrier()

    def load_checkpoint(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(Path(path) / self.checkpoint_subdir))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Transformer blocks to shard one by one (HF keeps them in a ModuleList)."""
    for name in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module = model
        try:
            for part in name.split("."):
                module = getattr(module, part)
        except AttributeError:
            continue
        return list(module)
    return []
