"""One policy update (forward, backward, grad clip, AdamW) of a 32-row GRPO batch on the real
model, before vs after the fast update path, in one process on one `LearnerWorker` (world size 1).

before: the LM head over every position, log-softmax of the whole [B, L-1, V] fp32 logits and a
        second softmax for the entropy, one micro-batch of `learner.micro_batch_size` rows, every
        row run (the learner's code before the change, bound onto the same worker).
after:  the LM head only from the micro-batch's first trained position, chunked log-softmax with
        the entropy from the same logsumexp, micro-batches packed by `learner.micro_batch_tokens`
        (0 = micro_batch_size rows), rows with zero advantage skipped (GRPO, no KL loss), and the
        samples of one prompt run as one packed sequence (`learner.share_prompts`; the
        "... rows" variants leave that out).

The batch mimics experiments/real_model.yaml: 8 rendered arithmetic prompts (chat template,
~50 tokens) x 4 samples, completions of 4-32 random tokens, GRPO advantages from random 0/1
rewards. `--uniform-groups K` makes K groups all-equal (zero advantage, skipped after); 0 times
pure compute. lr is 0, so every update sees the same weights: the losses of both paths are
printed and must agree. Variants are interleaved rep by rep so load drift hits them alike.

    python benchmarks/update_speed.py [--model artifacts/smollm2-135m-instruct] [--reps 3]
        [--budgets 0,2048] [--uniform-groups 0,2] [--threads 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from algorithms import get_algorithm, grpo_advantages  # noqa: E402
from rlcore.batch import build_batch  # noqa: E402
from rlcore.config import load_config  # noqa: E402
from rlcore.learner import LearnerWorker  # noqa: E402
from rlcore.prompts import PromptRenderer, load_datasets  # noqa: E402
from rlcore.update import UpdateBuilder  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def legacy_logprobs(self, model, input_ids, attention_mask, temperature, with_entropy=False, start=0,
                    prompt_len=None):
    """The learner's `_logprobs` before the change (every position, every row; `start` and
    `prompt_len` ignored)."""
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


def make_batch(cfg, tokenizer, uniform_groups: int, seed: int = 0, prompts: int = 8, samples: int = 4):
    rng = np.random.default_rng(seed)
    train, _ = load_datasets(cfg)
    renderer = PromptRenderer(tokenizer, cfg.data)
    prompt_ids, completions, owners = [], [], []
    for g, rec in enumerate(train[:prompts]):
        for _ in range(samples):
            n = int(rng.integers(4, 33))
            prompt_ids.append(renderer.ids(rec))
            completions.append(rng.integers(300, tokenizer.vocab_size, n - 1).tolist() + [tokenizer.eos_token_id])
            owners.append(g)
    batch = build_batch(prompt_ids, completions, tokenizer.pad_token_id,
                        rollout_logprobs=[(-rng.random(len(c))).tolist() for c in completions])
    rewards = np.zeros((prompts, samples), dtype=np.float32)
    for g in range(prompts):
        if g < uniform_groups:
            rewards[g] = float(g % 2)  # all wrong or all right: zero advantage
        else:
            rewards[g] = 0.0
            rewards[g, rng.choice(samples, int(rng.integers(1, samples)), replace=False)] = 1.0
    adv = grpo_advantages(torch.from_numpy(rewards.ravel()), torch.tensor(owners), eps=1e-6).numpy()
    batch["advantages"] = (adv[:, None] * batch["loss_mask"]).astype(np.float32)
    return batch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "smollm2-135m-instruct"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budgets", default="0,2048", help="learner.micro_batch_tokens values for 'after'")
    ap.add_argument("--uniform-groups", default="0,2", help="groups of 8 with zero advantage, per batch")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not (Path(args.model) / "config.json").exists():
        print(f"model directory {args.model} not found (convert it first: see experiments/real_model.yaml)")
        return 1

    cfg = load_config(ROOT / "experiments" / "real_model.yaml", [
        f"model.path={args.model}", f"learner.num_threads={args.threads}", "learner.micro_batch_size=32",
    ])
    spec = get_algorithm(cfg.algorithm.name)
    settings = UpdateBuilder(cfg, spec, pad_id=0).settings(lr=0.0)
    learner = LearnerWorker(0, 1, "127.0.0.1", _free_port(), cfg.to_dict())
    fast_logprobs = learner._logprobs
    budgets = [int(b) for b in args.budgets.split(",")]

    def run(name: str, batch: dict) -> tuple[float, dict]:
        legacy = name == "before"
        learner._logprobs = legacy_logprobs.__get__(learner) if legacy else fast_logprobs
        learner.settings = dataclasses.replace(
            learner.settings, micro_batch_tokens=0 if legacy else int(name.split("=")[1].split()[0]),
            share_prompts=not name.endswith(" rows"))
        t0 = time.perf_counter()
        skip = settings.skip_zero_advantage and not legacy
        metrics = learner.train(batch, "policy", dataclasses.replace(settings, skip_zero_advantage=skip))
        return time.perf_counter() - t0, metrics

    results = {}
    for uniform in (int(u) for u in args.uniform_groups.split(",")):
        batch = make_batch(cfg, learner.tokenizer, uniform)
        lengths = batch["attention_mask"].sum(1)
        zero_rows = int((~batch["advantages"].any(1)).sum())
        variants = ["before"] + [f"after tokens={b}{how}" for b in budgets for how in (" rows", "")]
        run("before", batch)  # warm-up (allocator, first-call overheads)
        times = {v: [] for v in variants}
        losses = {}
        for _ in range(args.reps):
            for v in variants:
                dt, metrics = run(v, batch)
                times[v].append(dt)
                losses[v] = (metrics["train/loss"], metrics["train/grad_norm"])
        base = statistics.median(times["before"])
        summary = {
            "rows": len(lengths), "width": int(batch["input_ids"].shape[1]),
            "tokens": int(lengths.sum()), "trained_tokens": int(batch["loss_mask"].sum()),
            "zero_advantage_rows": zero_rows, "threads": args.threads, "reps": args.reps,
        }
        for v in variants:
            med = statistics.median(times[v])
            summary[v] = {"median_s": round(med, 3), "min_s": round(min(times[v]), 3),
                          "max_s": round(max(times[v]), 3), "speedup": round(base / med, 2),
                          "loss": losses[v][0], "grad_norm": losses[v][1]}
        ref_loss, ref_norm = losses["before"]
        summary["max_rel_diff_loss"] = max(abs(losses[v][0] - ref_loss) / max(abs(ref_loss), 1e-12) for v in variants)
        summary["max_rel_diff_grad_norm"] = max(abs(losses[v][1] - ref_norm) / ref_norm for v in variants)
        results[f"uniform_groups={uniform}"] = summary
        print(json.dumps({f"uniform_groups={uniform}": summary}), flush=True)
    learner.shutdown()
    for key, summary in results.items():
        parts = [f"{v}: {summary[v]['median_s']:.2f}s (x{summary[v]['speedup']:.2f})"
                 for v in summary if isinstance(summary[v], dict)]
        print(f"{key} ({summary['zero_advantage_rows']} zero-advantage rows, {summary['tokens']} tokens): "
              + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
