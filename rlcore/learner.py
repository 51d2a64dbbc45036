"""LearnerWorker: one rank of the FSDP2 policy group (gloo on CPU, NCCL on GPU).

Every public method is a collective: the driver calls it on all ranks with each rank's shard of
the batch, and all ranks run the same number of forward/backward passes.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from algorithms import Algorithm, PolicyLossInput, aggregate, get_algorithm
from algorithms.off_policy import truncated_is_weights
from rlcore.config import ExperimentConfig, LearnerConfig, ModelConfig
from rlcore.cpu_pinning import pin_to_cores
from rlcore.logprobs import model_logprobs
from rlcore.update import UpdateSettings, kl_loss_coef
from rollout.model_io import DTYPES, load_causal_lm


class LearnerWorker:
    checkpoint_subdir = "learner"  # DCP shards, under the step's checkpoint directory
    hf_subdir = "model"  # the HF model directory next to them
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, cfg: dict):
        """`cfg` is ExperimentConfig.to_dict(), the wire form; it is rebuilt (and checked) into
        the same typed config here, plug-in options included."""
        from rlcore.config import config_from_dict

        self.rank, self.world_size = rank, world_size
        self.cfg = config_from_dict(cfg, source="<learner worker config>")
        self.settings = self.rank_settings(self.cfg)
        lcfg = self.settings
        on_gpu = lcfg.gpus_per_rank > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        backend = lcfg.backend if lcfg.backend != "auto" else ("nccl" if on_gpu else "gloo")
        if lcfg.num_threads > 0:
            torch.set_num_threads(lcfg.num_threads)
        pin_to_cores(lcfg.cpu_cores)
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        # Binding the rank to its GPU lets NCCL set up communicators eagerly and keeps
        # barrier() from guessing the device.
        bind = {"device_id": self.device} if on_gpu else {}
        dist.init_process_group(backend, rank=rank, world_size=world_size, **bind)
        torch.manual_seed(self.cfg.seed)

        mcfg = self.cfg.model
        self.model, self.tokenizer = self._load_model(mcfg)
        if lcfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        self._shard(self.model, DTYPES[mcfg.dtype])
        self.ref_model = None
        self.optimizer = self._make_optimizer(lcfg.lr)

    # ------------------------------------------------------------------ setup

    @staticmethod
    def rank_settings(cfg: ExperimentConfig) -> LearnerConfig:
        """This group's settings: the policy's `learner:` section (the critic overrides this)."""
        return cfg.learner

    @functools.cached_property
    def algorithm(self) -> Algorithm:
        """Resolved here, by name or import path, as the driver did (rlcore/plugins.py)."""
        return get_algorithm(self.cfg.algorithm.name)

    def _load_model(self, mcfg: ModelConfig):
        # Master weights stay fp32; bf16/fp16 is a compute dtype applied by FSDP's policy.
        return load_causal_lm(
            mcfg.path, "float32", str(self.device), mcfg.attn_implementation, mcfg.trust_remote_code,
            compute_dtype=mcfg.dtype,
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
        lcfg = self.settings
        # After a no-grad forward FSDP2 leaves the root's parameters unsharded; an optimizer
        # built on those tensors would never update the sharded ones (embeddings, norm, head).
        self.model.reshard()
        return torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=tuple(lcfg.betas), weight_decay=lcfg.weight_decay
        )

    def reset_optimizer(self, lr: float) -> None:
        """Fresh AdamW moments (e.g. between SFT warm-up and RL, which use different scales)."""
        self.optimizer = self._make_optimizer(lr)

    def enable_reference(self, path: str) -> None:
        """Freeze the model at `path` (the post-SFT policy the trainer saved) as the KL reference."""
        mcfg = self.cfg.model
        ref, _ = load_causal_lm(path, "float32", str(self.device), mcfg.attn_implementation,
                                mcfg.trust_remote_code, compute_dtype=mcfg.dtype)
        ref.requires_grad_(False)
        self._shard(ref, DTYPES[mcfg.dtype])
        self.ref_model = ref.eval()

    def ping(self) -> int:
        return self.rank

    # -------------------------------------------------------------- forward

    def _logprobs(self, model, input_ids, attention_mask, temperature: float, with_entropy: bool = False,
                  start: int = 0, prompt_len: torch.Tensor | None = None):
        """See rlcore/logprobs.py; rows that share a prompt run packed with `learner.share_prompts`."""
        return model_logprobs(model, input_ids, attention_mask, temperature, with_entropy, start,
                              prompt_len if self.settings.share_prompts else None)

    @staticmethod
    def _first_scored(mb: dict[str, torch.Tensor]) -> int:
        """First [B, L-1] position any row of the micro-batch trains on (loss_mask); 0 without a mask."""
        mask = mb.get("loss_mask")
        if mask is None:
            return 0
        cols = torch.nonzero(mask.detach().sum(0) > 0)
        return int(cols[0]) if len(cols) else max(mask.shape[1] - 1, 0)

    def _to_tensors(self, batch: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows `idx` as tensors, trimmed to their longest row (right padding)."""
        width = int(batch["attention_mask"][idx].sum(1).max())
        mb = {}
        for key, arr in batch.items():
            part = arr[idx]
            if part.ndim == 2:
                part = part[:, : width if key in ("input_ids", "attention_mask") else width - 1]
            mb[key] = torch.from_numpy(np.ascontiguousarray(part)).to(self.device)
        return mb

    def _plan(self, batch: dict[str, np.ndarray], indices: np.ndarray) -> list[np.ndarray]:
        """Row groups for the forward passes (policy, critic, GVM norms).

        `learner.micro_batch_tokens` > 0: rows sorted by length (longest first) and packed while
        rows x longest row stays within the budget (a longer row goes alone); otherwise chunks of
        `micro_batch_size` rows in order. The counts may differ between ranks: see `_agree`.
        """
        budget = self.settings.micro_batch_tokens
        indices = np.asarray(indices)
        if budget <= 0:
            size = self.settings.micro_batch_size
            return [indices[s : s + size] for s in range(0, len(indices), size)]
        lengths = batch["attention_mask"][indices].sum(1)
        order = np.argsort(-lengths, kind="stable")
        plan, current, width = [], [], 0
        for k in order:
            if current and width * (len(current) + 1) > budget:
                plan.append(indices[current])
                current = []
            if not current:
                width = int(lengths[k])
            current.append(k)
        if current:
            plan.append(indices[current])
        return plan

    def _agree(self, count: int, at_least: int = 0) -> int:
        """Forward/backward passes every rank runs: the max over ranks (each pass is a collective);
        ranks with fewer run zero-weight filler passes (`_filler`)."""
        if self.world_size > 1:
            t = torch.tensor([count], dtype=torch.int64, device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            count = int(t.item())
        return max(count, at_least)

    def _filler(self) -> dict[str, torch.Tensor]:
        """A two-token row for a zero-weight pass: it joins the collectives and adds nothing."""
        ids = torch.zeros((1, 2), dtype=torch.int64, device=self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    @torch.no_grad()
    def compute_logprobs(self, batch: dict[str, np.ndarray], temperature: float = 1.0, reference: bool = False,
                         positions: str = "all"):
        """Per-token log-probs [B, L-1] (zero beyond each row's length).

        positions="all" scores every token (the weight-sync check, probes); "loss" only the
        positions from each micro-batch's first `loss_mask` position on (zeros before), which is
        all that the losses read and skips the LM head over prompts.
        """
        if positions not in ("all", "loss"):
            raise ValueError(f"positions must be 'all' or 'loss', got {positions!r}")
        model = self.ref_model if reference else self.model
        model.eval()
        out = np.zeros(batch["input_ids"][:, 1:].shape, dtype=np.float32)
        plan = self._plan(batch, np.arange(len(batch["input_ids"])))
        for k in range(self._agree(len(plan))):
            if k >= len(plan):
                self._logprobs(model, **self._filler(), temperature=temperature)
                continue
            mb = self._to_tensors(batch, plan[k])
            start = self._first_scored(mb) if positions == "loss" else 0
            logp, _ = self._logprobs(model, mb["input_ids"], mb["attention_mask"], temperature, start=start,
                                     prompt_len=mb.get("prompt_len") if positions == "loss" else None)
            w = logp.shape[1]
            out[plan[k], :w] = (logp * mb["attention_mask"][:, 1:]).cpu().numpy()
        return out

    def sequence_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        width = max(len(s) for s in sequences)
        ids = np.zeros((len(sequences), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, s in enumerate(sequences):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1
        lp = self.compute_logprobs({"input_ids": ids, "attention_mask": mask}, positions="all")
        return [lp[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]

    # ------------------------------------------------------------------ train

    def train(self, batch: dict[str, np.ndarray], loss: str, settings: UpdateSettings) -> dict[str, float]:
        """One RL or SFT step over this rank's shard: epochs x mini-batches x micro-batches.

        `loss` is "sft" (mean NLL on loss_mask tokens) or "policy" (the algorithm's loss).
        Normalisers are global over ranks so that gradient accumulation and data parallelism
        reproduce the full-batch loss exactly.
        """
        t0 = time.perf_counter()
        self._set_lr(settings.lr)
        metrics = self._train_steps(batch, settings, lambda mini: self._optimizer_step(batch, mini, loss, settings))
        # Keys that already name their section ("async/is_weight_mean") keep it.
        out = {(k if "/" in k else f"train/{k}"): v for k, v in metrics.items()}
        out["time/update_rank_s"] = time.perf_counter() - t0
        return out

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _global_sum(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    # The training loop shared by the policy (`train`), the critic (rlcore/critic.py) and GVM's
    # gradient norms: `_train_steps` runs epochs x mini-batches of optimizer steps,
    # `_accumulate_step` one optimizer step, `_backward_passes` its forward/backward passes. A
    # micro-batch's loss comes from a callable `micro_loss(mb) -> (loss, metrics, weight)`:
    # `loss` uses the global normalisers, so the sum over micro-batches and ranks is the
    # mini-batch's loss; `metrics` are means over the micro-batch, combined weighted by `weight`
    # (its trained tokens), or as max/min for keys ending in _max/_min.

    def _train_steps(self, batch: dict[str, np.ndarray], settings: UpdateSettings, step) -> dict[str, float]:
        """`step(indices)` over epochs x mini-batches of this rank's rows; metrics averaged over steps."""
        self.model.train()
        n = len(batch["input_ids"])
        minis = np.array_split(np.arange(n), settings.mini_batches)
        totals: dict[str, float] = {}
        count = 0
        for _ in range(settings.epochs):
            for mini in minis:
                for k, v in step(mini).items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in totals.items()}

    def _accumulate_step(self, batch: dict[str, np.ndarray], rows: np.ndarray, micro_loss) -> dict[str, float]:
        """One optimizer step: gradients of `micro_loss` accumulated over `rows` (see
        `_backward_passes`), clipped to learner.grad_clip, then applied.

        Returns "loss" (this rank's part of the mini-batch loss: the parts add up over ranks),
        "grad_norm" (global, before clipping) and the other metrics over the rows that ran.
        """
        self.optimizer.zero_grad(set_to_none=True)
        sums, weights = self._backward_passes(batch, rows, micro_loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optimizer.step()
        result = {k: (v if (k.endswith(("_max", "_min")) or k == "loss") else v / max(weights, 1.0))
                  for k, v in sums.items()}
        result["grad_norm"] = float(grad_norm)
        return result

    def _backward_passes(self, batch: dict[str, np.ndarray], rows: np.ndarray, micro_loss):
        """Forward/backward over `rows` in the passes of `_plan`, accumulating gradients.

        Every rank runs the same number of passes (`_agree`; a rank with fewer runs zero-weight
        filler passes) and at least one, so every parameter gets a (zero) gradient and AdamW
        steps as usual. Returns (sums, weights): "loss" summed, the other metrics summed
        weighted by their micro-batch's weight (or max/min), and the total weight.
        """
        plan = self._plan(batch, rows)
        sums: dict[str, float] = {"loss": 0.0}  # other metrics come from the rows that ran
        weights = 0.0
        for k in range(self._agree(len(plan), at_least=1)):
            if k >= len(plan):
                (self._filler_output() * 0.0).backward()
                continue
            value, metrics, w = micro_loss(self._to_tensors(batch, plan[k]))
            # FSDP averages gradients over ranks; scale so the sum over ranks is the global loss.
            (value * float(self.world_size)).backward()
            weights += w
            # Micro-batch losses use global normalisers, so their sum (over ranks too) is the loss.
            sums["loss"] += float(value.detach())
            for key, v in metrics.items():
                if key.endswith("_max"):
                    sums[key] = max(sums.get(key, -np.inf), v)
                elif key.endswith("_min"):
                    sums[key] = min(sums.get(key, np.inf), v)
                else:
                    sums[key] = sums.get(key, 0.0) + v * w
        return sums, weights

    def _filler_output(self) -> torch.Tensor:
        """The model's output on the `_filler` row, summed: a pass that joins the collectives
        (the critic overrides it with its values)."""
        logp, _ = self._logprobs(self.model, **self._filler(), temperature=1.0)
        return logp.sum()

    def _optimizer_step(self, batch, indices, loss: str, settings: UpdateSettings) -> dict[str, float]:
        mask_all = batch["loss_mask"][indices]
        tokens = self._global_sum(float(mask_all.sum()))
        seqs = self._global_sum(float((mask_all.sum(1) > 0).sum()))
        algo, rollout = self.cfg.algorithm, self.cfg.rollout
        temperature = 1.0 if loss == "sft" else rollout.temperature  # the policy's log-probs as sampled
        n_mini = float(settings.mini_batches)

        def micro_loss(mb: dict[str, torch.Tensor]):
            mask = mb["loss_mask"].float()
            logp, entropy = self._logprobs(
                self.model, mb["input_ids"], mb["attention_mask"], temperature, with_entropy=True,
                start=self._first_scored(mb), prompt_len=mb.get("prompt_len"),
            )
            if loss == "sft":
                value = aggregate(-logp, mask, "token-mean", token_normalizer=tokens)
                metrics = {"nll": float((-logp.detach() * mask).sum() / mask.sum().clamp(min=1))}
            else:
                advantages, is_metrics = mb["advantages"], {}
                if settings.tis_cap is not None:
                    # Asynchronous rollout, single pass: pi_old is this very forward (rlcore/update.py).
                    tis, is_metrics = truncated_is_weights(logp.detach(), mb["rollout_logp"], mask,
                                                           settings.tis_cap)
                    advantages = advantages * tis
                out = self.algorithm.loss(
                    PolicyLossInput(
                        logp=logp,
                        old_logp=mb["old_logp"] if "old_logp" in mb else logp.detach(),
                        advantages=advantages,
                        mask=mask,
                        ref_logp=mb.get("ref_logp"),
                        clip_low=algo.clip_low,
                        clip_high=algo.clip_high,
                        dual_clip_c=algo.dual_clip_c,
                        kl_coef=kl_loss_coef(self.cfg),
                        kl_estimator=algo.kl_estimator,
                        agg_mode=algo.loss_agg,
                        token_normalizer=tokens,
                        seq_normalizer=seqs,
                        max_tokens=rollout.max_new_tokens,
                        # Weights over the whole batch; each mini-batch is scaled to its size.
                        token_weight=mb["token_weight"] * n_mini if "token_weight" in mb else None,
                        extras={k[6:]: v for k, v in mb.items() if k.startswith("extra/")},
                        options=self.cfg.algorithm.options,
                    )
                )
                value, metrics = out.loss, {**out.metrics, **is_metrics}
                if "rollout_logp" in mb:
                    diff = (logp.detach() - mb["rollout_logp"]).abs() * mask
                    metrics["rollout_logp_diff_max"] = float(diff.max())
            metrics["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
            return value, metrics, float(mask.sum())

        return self._accumulate_step(batch, self._rows_to_run(batch, indices, loss, settings), micro_loss)

    def _rows_to_run(self, batch, indices: np.ndarray, loss: str, settings: UpdateSettings) -> np.ndarray:
        """Rows of `indices` whose loss can be non-zero.

        With `settings.skip_zero_advantage` (set by rlcore/update.py only for algorithms whose
        spec says a zero advantage gives exactly zero loss, and without a KL loss term), rows
        whose advantages are all zero are not run: they add nothing to the loss or gradients,
        and the normalisers were already counted over all rows (metrics such as entropy then
        cover the rows that ran).
        """
        if loss == "sft" or not settings.skip_zero_advantage or "advantages" not in batch:
            return indices
        return indices[np.asarray(batch["advantages"][indices] != 0).any(axis=1)]

    def likelihood_grad_norms(self, batch: dict[str, np.ndarray], group_ids: list[int]) -> list[float]:
        """Per group: norm of the gradient of its rows' token-mean log-likelihood (GVM's G_i).

        Every rank sees the whole batch and takes a strided share of each group's rows; the
        shares may need different numbers of passes (or none), so they run through
        `_backward_passes`, whose ranks agree on the pass count. FSDP's gradient average is
        undone by scaling with the world size, as in `train`. Parameters are not updated.
        """
        self.model.train()
        groups = np.asarray(group_ids)
        norms = []
        for g in sorted(set(group_ids)):
            rows = np.flatnonzero(groups == g)
            tokens = max(float(batch["loss_mask"][rows].sum()), 1.0)

            def micro_loss(mb: dict[str, torch.Tensor], tokens: float = tokens):
                mask = mb["loss_mask"].float()
                logp, _ = self._logprobs(self.model, mb["input_ids"], mb["attention_mask"], 1.0,
                                         start=self._first_scored(mb), prompt_len=mb.get("prompt_len"))
                return -(logp * mask).sum() / tokens, {}, float(mask.sum())

            self.optimizer.zero_grad(set_to_none=True)
            self._backward_passes(batch, rows[self.rank :: self.world_size], micro_loss)
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

    def weight_sync(self, action: str, *args):
        """Collective weight push to the rollout engines ("connect", then "push" each step);
        every rank takes part (the gather is an FSDP collective). See rollout/weight_sync.py."""
        from rollout.weight_sync import learner_weight_sync

        return learner_weight_sync(self, action, *args)

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
