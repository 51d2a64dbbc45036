"""How widely does per-prompt difficulty spread? The acceptance rate p_i of each prompt, from k
samples at the training temperature, as GVM's pre-sampling sees it (issue 15: allocation can
only pay where p_i varies from almost always to almost never solved).

    python benchmarks/difficulty_spread.py [--config experiments/real_model.yaml] [--prompts 48]
        [--samples 8] [-- overrides...]

Defaults: the real model (SmolLM2-135M-Instruct) on arithmetic mixing 2-3 operands with operand
bounds 9 / 29 / 99 (`data.arith_operand_ranges`). Generation runs in this process with the
vLLM engine (no Ray); the reward is the config's. Prints the histogram of p_i, the share of
prompts with p = 0 and p = 1, p_i's 5th-95th percentiles, the mean p per difficulty label, and how
well half the samples estimate p_i (the correlation of two independent halves' estimates).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIXED = ["data.arith_min_operands=2", "data.arith_max_operands=3", "data.arith_operand_ranges=[9, 29, 99]",
         "data.arith_eval_split=iid"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "experiments" / "real_model.yaml"))
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="config overrides (default: the mixed-difficulty task)")
    args = ap.parse_args()

    from rewards import RewardInput, RewardPool, reward_from_config
    from rlcore.config import load_config
    from rlcore.prompts import PromptRenderer, load_datasets
    from rlcore.sampling import is_accepted
    from rlcore.trainer import Trainer
    from rollout.engine import Request, SamplingConfig, request_seed
    from rollout.vllm_engine import VLLMEngine

    cfg = load_config(args.config, args.overrides or MIXED)
    Trainer._prepare_model(type("T", (), {"cfg": cfg})())  # build or convert the model if needed
    engine = VLLMEngine(cfg.model.path, dtype=cfg.model.dtype, seed=cfg.seed, max_model_len=cfg.rollout.max_model_len)
    renderer = PromptRenderer(engine.tokenizer, cfg.data)
    records = load_datasets(cfg)[0][: args.prompts]
    k = args.samples
    requests = [Request(renderer.ids(r), request_seed(cfg.seed, 0, i, j)) for i, r in enumerate(records) for j in range(k)]
    sampling = SamplingConfig(max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                              top_p=cfg.rollout.top_p, stop_token_ids=[engine.tokenizer.eos_token_id])
    completions = engine.generate(requests, sampling)
    pool = RewardPool(reward_from_config(cfg.reward), num_workers=1, timeout_s=cfg.reward.timeout_s)
    try:
        results = pool.score([
            RewardInput(prompt=r["prompt"], completion=engine.tokenizer.decode(c.token_ids, skip_special_tokens=True),
                        ground_truth=str(r["answer"]), metadata=r.get("metadata") or {})
            for r, c in zip((r for r in records for _ in range(k)), completions)])
    finally:
        pool.close()
    p = np.array([is_accepted(x) for x in results], dtype=float).reshape(len(records), k).mean(axis=1)

    print(f"{len(records)} prompts x {k} samples, T={cfg.rollout.temperature}, {cfg.model.path}")
    bins = {"p = 0": p == 0, "0 < p < 0.25": (p > 0) & (p < 0.25), "0.25 <= p < 0.5": (p >= 0.25) & (p < 0.5),
            "0.5 <= p < 0.75": (p >= 0.5) & (p < 0.75), "0.75 <= p < 1": (p >= 0.75) & (p < 1), "p = 1": p == 1}
    for label, hit in bins.items():
        print(f"  {label:>16s}: {int(hit.sum()):3d} {'#' * int(hit.sum())}")
    print(f"p = 0: {np.mean(p == 0):.0%} of prompts; p = 1: {np.mean(p == 1):.0%}; "
          f"p_i 5th-95th percentile: {np.percentile(p, 5):.2f}-{np.percentile(p, 95):.2f}; mean {p.mean():.2f}")
    by_level: dict[str, list[float]] = defaultdict(list)
    for r, value in zip(records, p):
        by_level[str(r.get("difficulty"))].append(value)
    print("mean p by difficulty: " + ", ".join(f"{lvl} {np.mean(v):.2f} (n={len(v)})"
                                               for lvl, v in sorted(by_level.items())))
    if k >= 4:
        # How well does a pre-sampling pass of k/2 samples know p_i? Two independent halves of
        # each prompt's samples: their estimates' correlation is the reliability of one half.
        ok = np.array([is_accepted(x) for x in results], dtype=float).reshape(len(records), k)
        a, b = ok[:, : k // 2].mean(1), ok[:, k // 2 :].mean(1)
        r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        noise = float(np.mean(p * (1 - p)) / (k // 2))  # binomial variance of a k/2-sample estimate
        print(f"split halves of {k // 2} samples: correlation of p_i estimates {r:.2f}; "
              f"mean |difference| {np.mean(np.abs(a - b)):.3f}; binomial noise variance {noise:.4f} "
              f"vs spread of p_i {p.var():.4f}")


if __name__ == "__main__":
    main()
