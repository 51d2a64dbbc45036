"""Where does an RL step's time go, and what does the framework cost over a plain loop?

1. Framework: `rlcore.train` on the quickstart config (real Ray, vLLM, FSDP2, reward pool; SFT
   warm-up first so response lengths are realistic). The trainer logs each phase's time
   (generate, reward, logprob, update, sync; Ray round trips included) and the step's; overhead
   = step - phases (prompt rendering, advantages, batch building between the phases).
2. Baseline: the same GRPO step in this one process, no Ray / vLLM / FSDP: HF `generate` from
   the framework run's final checkpoint, in-process reward, one forward/backward with the same
   loss, AdamW. Same prompts (the framework's prompt stream replayed), batch size and steps.

Both are measured in this process, now (nothing is hard-coded); warm-up steps are dropped from
both. "overhead" only counts time between phases; the step-total ratio is the full price of
the distributed machinery on this machine. Other load on the machine skews either side, so
the JSON records load averages and per-step times.

    python benchmarks/step_profile.py [--steps 12] [--warmup 2] [--sft-steps 100] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
PHASES = ["generate", "reward", "logprob", "update", "sync"]


def summarize(rows: list[dict]) -> dict:
    """Means over steps; overhead = step - sum(phases)."""
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    out = {f"{p}_s": mean(p) for p in PHASES + ["step"]}
    out["overhead_s"] = out["step_s"] - sum(out[f"{p}_s"] for p in PHASES)
    for p in PHASES + ["overhead"]:
        out[f"{p}_share"] = out[f"{p}_s"] / out["step_s"]
    for k in ("gen_tokens_per_s", "trained_tokens_per_s", "response_length_mean"):
        out[k] = mean(k)
    out["step_median_s"] = statistics.median(r["step"] for r in rows)
    untimed = [r["untimed"] for r in rows if r.get("untimed") is not None]
    out["outside_step_timer_s"] = sum(untimed) / len(untimed) if untimed else None
    return out


def framework(args, out: Path):
    import rlcore
    from rlcore.config import load_config
    from rlcore.data.source import PromptSource
    from rlcore.prompts import PromptRenderer, load_datasets
    from transformers import AutoTokenizer

    overrides = [
        f"name=step_profile_{time.strftime('%Y%m%d_%H%M%S')}", f"output_dir={out / 'runs'}",
        f"model.path={out / 'tiny-qwen2'}", "model.build_tiny=true", f"trainer.total_steps={args.steps}",
        "trainer.max_wall_time_s=0", "trainer.checkpoint_every=0", "trainer.checkpoint_every_minutes=0", "eval.every=0", "eval.num_prompts=32",
        "tracking.progress=false", "tracking.tensorboard=false", f"sft.steps={args.sft_steps}",
    ]
    cfg = load_config(args.config, overrides)
    summary = rlcore.train(args.config, overrides=overrides)
    run_dir = Path(summary["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "reward/mean" in r]
    if len(steps) != args.steps:
        raise RuntimeError(f"expected {args.steps} step rows in {run_dir}/metrics.jsonl, got {len(steps)}")
    # Replay the trainer's prompt stream (same records, seed, batch size) for exact prompt lengths
    # and so the baseline trains on the very same prompts.
    renderer = PromptRenderer(AutoTokenizer.from_pretrained(cfg.model.path), cfg.data)
    source = PromptSource(load_datasets(cfg)[0], cfg.rollout.prompts_per_step, seed=cfg.seed, drop_last=True)
    batches = [source.next_batch() for _ in steps]
    n, per_step, wall = cfg.rollout.n_samples, [], {r["step"]: r["time/wall_s"] for r in rows}
    for r, records in zip(steps, batches):
        prompt_tokens = n * sum(len(renderer.ids(rec)) for rec in records)
        resp_tokens = r["response/length_mean"] * len(records) * n
        per_step.append({
            **{p: r[f"time/{p}_s"] for p in PHASES}, "step": r["time/step_s"],
            "gen_tokens_per_s": r["throughput/gen_tokens_per_s"], "response_length_mean": r["response/length_mean"],
            "trained_tokens_per_s": (prompt_tokens + resp_tokens) / r["time/step_s"],
            # loop time the step timer misses (sample writing, logging); the last step also evals
            "untimed": None if "eval/accuracy" in r else wall[r["step"]] - wall[r["step"] - 1] - r["time/step_s"],
        })
    model_dir = run_dir / "checkpoints" / f"step_{summary['steps']}" / "model"
    return cfg, run_dir, model_dir, batches, per_step


def baseline(cfg, model_dir: Path, batches: list[list[dict]]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from algorithms import PolicyLossInput, clipped_policy_loss, grpo_advantages
    from rewards.math_answer import math_answer
    from rlcore.prompts import PromptRenderer

    torch.set_num_threads(2)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    renderer = PromptRenderer(tok, cfg.data)
    lc, rc, ac = cfg.learner, cfg.rollout, cfg.algorithm
    opt = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay)
    pad, eos, n = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, tok.eos_token_id, rc.n_samples
    rows = []
    for records in batches:
        t_step = time.perf_counter()
        prompts = [renderer.ids(rec) for rec in records for _ in range(n)]
        owners = torch.arange(len(records)).repeat_interleave(n)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):], attn[i, width - len(p):] = torch.tensor(p), 1
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            seq = model.generate(
                input_ids=ids, attention_mask=attn, do_sample=True, temperature=rc.temperature, top_p=rc.top_p,
                top_k=None, max_new_tokens=rc.max_new_tokens, eos_token_id=eos, pad_token_id=pad,
            )
        gen_s = time.perf_counter() - t
        resp = seq[:, width:]
        is_eos = resp == eos
        lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.tensor(resp.shape[1]))
        resp_mask = (torch.arange(resp.shape[1])[None] < lengths[:, None]).long()
        t = time.perf_counter()
        texts = [tok.decode(resp[i, : lengths[i]].tolist(), skip_special_tokens=True) for i in range(len(prompts))]
        scores = [math_answer(records[o]["prompt"], text, str(records[o]["answer"]), records[o].get("metadata") or {})
                  for o, text in zip(owners.tolist(), texts)]
        reward_s = time.perf_counter() - t
        rewards = torch.tensor([s["score"] for s in scores], dtype=torch.float32)
        adv = grpo_advantages(rewards, owners, eps=getattr(ac.options, "eps", 1e-6))
        full_attn = torch.cat([attn, resp_mask], 1)
        mask = torch.zeros(seq.shape[0], seq.shape[1] - 1)
        mask[:, width - 1:] = resp_mask.float()  # position t scores token t+1
        t = time.perf_counter()
        model.train()
        pos = (full_attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=seq, attention_mask=full_attn, position_ids=pos, use_cache=False).logits[:, :-1].float()
        if rc.temperature not in (0.0, 1.0):
            logits = logits / rc.temperature
        logp = torch.log_softmax(logits, -1).gather(-1, seq[:, 1:].unsqueeze(-1)).squeeze(-1)
        loss = clipped_policy_loss(PolicyLossInput(
            logp=logp, old_logp=logp.detach(), advantages=adv[:, None] * mask, mask=mask,
            clip_low=ac.clip_low, clip_high=ac.clip_high, dual_clip_c=ac.dual_clip_c,
            agg_mode=ac.loss_agg, max_tokens=rc.max_new_tokens,
        )).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), lc.grad_clip)
        opt.step()
        update_s = time.perf_counter() - t
        step_s = time.perf_counter() - t_step
        rows.append({
            "generate": gen_s, "reward": reward_s, "logprob": 0.0, "update": update_s, "sync": 0.0, "step": step_s,
            "gen_tokens_per_s": float(lengths.sum()) / gen_s, "response_length_mean": float(lengths.float().mean()),
            "trained_tokens_per_s": float(attn.sum() + lengths.sum()) / step_s, "reward_mean": float(rewards.mean()),
        })
    return rows


def ratio(a, b):
    return a / b if a is not None and b else None


def report(fw: dict, bl: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    fmt = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
    table = Table(title="RL step profile (mean over measured steps)")
    for col in ("phase", "framework s", "framework share", "baseline s", "framework/baseline"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p in PHASES + ["overhead", "step"]:
        share = fmt(fw.get(f"{p}_share", 1.0), ".1%")
        table.add_row(p if p != "step" else "step total", fmt(fw[f"{p}_s"], ".3f"), share,
                      fmt(bl[f"{p}_s"], ".3f"), fmt(ratio(fw[f"{p}_s"], bl[f"{p}_s"]), ".2f") + ("x" if bl[f"{p}_s"] > 0 else ""))
    console = Console(width=120)
    console.print(table)
    for k, label in (("gen_tokens_per_s", "generated tokens/s"), ("trained_tokens_per_s", "trained tokens/s"),
                     ("response_length_mean", "response length (tokens)")):
        console.print(f"{label}: framework {fw[k]:.1f}, baseline {bl[k]:.1f}, ratio {fmt(ratio(fw[k], bl[k]), '.2f')}")
    console.print(f"median step: framework {fw['step_median_s']:.3f} s, baseline {bl['step_median_s']:.3f} s; "
                  f"framework loop time outside the step timer: {fmt(fw['outside_step_timer_s'], '.3f')} s/step")
    extra = fw["step_s"] - bl["step_s"]
    console.print(f"framework step vs baseline step: {extra:+.3f} s ({extra / bl['step_s']:+.0%})")
    console.print(f"framework overhead: {fw['overhead_share']:.1%} of step time (target < 10%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--steps", 12), ("--warmup", 2), ("--sft-steps", 100)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--config", default=str(ROOT / "experiments" / "quickstart.yaml"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not 0 <= args.warmup < args.steps:
        ap.error("need 0 <= --warmup < --steps")
    out = Path(args.out or tempfile.mkdtemp(prefix="step_profile_")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    load = {"before": os.getloadavg()}  # 1/5/15-min load: other work on the machine skews both runs
    cfg, run_dir, model_dir, batches, fw_rows = framework(args, out)
    load["after_framework"] = os.getloadavg()
    import ray

    if ray.is_initialized():  # nothing of the framework may keep running during the baseline
        ray.shutdown()
    bl_rows = baseline(cfg, model_dir, batches)
    load["after_baseline"] = os.getloadavg()
    fw, bl = summarize(fw_rows[args.warmup:]), summarize(bl_rows[args.warmup:])
    report(fw, bl)
    print(f"load average (1/5/15 min; {os.cpu_count()} cores): {load}")
    result = {
        "config": str(args.config), "steps": args.steps, "warmup": args.warmup, "sft_steps": args.sft_steps,
        "batch": {"prompts_per_step": cfg.rollout.prompts_per_step, "n_samples": cfg.rollout.n_samples,
                  "max_new_tokens": cfg.rollout.max_new_tokens},
        "run_dir": str(run_dir), "baseline_model": str(model_dir), "framework": fw, "baseline": bl,
        "ratio_framework_over_baseline": {k: ratio(fw[k], bl[k]) for k in fw if k.endswith("_s") or k.endswith("_per_s")},
        "load_average": load, "per_step": {"framework": fw_rows, "baseline": bl_rows},
    }
    (out / "step_profile.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'step_profile.json'}")


if __name__ == "__main__":
    main()
