"""Synchronous vs asynchronous rollout, side by side in one invocation, as a disaggregated cluster runs.

Both arms run experiments/real_model.yaml (SmolLM2-135M-Instruct, GRPO) with the rollout engine
pinned to one core and the learner to the other (`rollout.cpu_cores`, `learner.cpu_cores`), the
way engines and learners own their own hardware on a real cluster:

- sync:  `rollout.max_staleness: 0`, generation and update take turns (each core idles half the time);
- async: `rollout.max_staleness: 1`, step t+1 is generated while step t trains, with truncated
  importance weights for the one-version lag.

Prints per arm the median step time (after --warmup steps), its phase split, the training-reward
curve step by step, and the held-out accuracy at the start and the end; then the step-time ratio.

    python benchmarks/async_rollout.py [--steps 12] [--warmup 2] [--eval-prompts 150]
        [--rollout-core 0] [--learner-core 1] [--out DIR] [-- extra.overrides=...]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "experiments" / "real_model.yaml"
ARMS = {"sync": 0, "async": 1}
PHASES = ("generate_s", "update_s", "logprob_s", "sync_s", "rollout_wait_s")


def run_arm(name: str, staleness: int, args, out: Path) -> dict:
    log = out / f"{name}.log"
    cmd = [sys.executable, "-m", "rlcore.cli", "train", str(CONFIG), f"name={name}", f"output_dir={out}",
           "overwrite=true", "tracking.progress=false", f"rollout.max_staleness={staleness}",
           f"rollout.cpu_cores=[{args.rollout_core}]", f"learner.cpu_cores=[{args.learner_core}]",
           "learner.num_threads=1", f"trainer.total_steps={args.steps}", "trainer.max_wall_time_s=0",
           f"eval.every={args.steps}", f"eval.num_prompts={args.eval_prompts}", "trainer.checkpoint_every=0", "trainer.checkpoint_every_minutes=0",
           *args.overrides]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    from rlcore.tracking import read_metrics

    rows = read_metrics(out / name)
    return {"rows": rows, "process_wall_s": time.perf_counter() - start}


def summarize(rows: list[dict], warmup: int) -> dict:
    steps = [r for r in rows if "reward/mean" in r]
    timed = [r for r in steps if r["step"] > warmup] or steps
    evals = [r for r in rows if "eval/accuracy" in r]
    med = lambda key: statistics.median(r.get(key, 0.0) for r in timed)  # noqa: E731
    return {
        "step_s": med("time/step_s"),
        "step_s_range": [min(r["time/step_s"] for r in timed), max(r["time/step_s"] for r in timed)],
        **{p: med(f"time/{p}") for p in PHASES},
        "reward_curve": [round(r["reward/mean"], 3) for r in steps],
        "staleness": [r.get("async/staleness", 0) for r in steps],
        "is_clipped_frac_mean": statistics.mean(r.get("async/is_clipped_frac", 0.0) for r in steps),
        "eval_first": evals[0]["eval/accuracy"] if evals else None,
        "eval_last": evals[-1]["eval/accuracy"] if evals else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--eval-prompts", type=int, default=150)
    ap.add_argument("--rollout-core", type=int, default=0)
    ap.add_argument("--learner-core", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both arms")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="async_rollout_"))
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, k in ARMS.items():
        run = run_arm(name, k, args, out)
        results[name] = {**summarize(run["rows"], args.warmup), "process_wall_s": run["process_wall_s"]}
        r = results[name]
        print(f"{name:5s} step {r['step_s']:.2f} s (range {r['step_s_range'][0]:.2f}-{r['step_s_range'][1]:.2f}); "
              + ", ".join(f"{p[:-2]} {r[p]:.2f}" for p in PHASES)
              + f"; eval {r['eval_first']:.3f} -> {r['eval_last']:.3f}; process {r['process_wall_s']:.0f} s", flush=True)
    print("\ntraining reward per step (sync | async):")
    for i, (a, b) in enumerate(zip(results["sync"]["reward_curve"], results["async"]["reward_curve"]), start=1):
        print(f"  step {i:3d}  {a:.3f} | {b:.3f}   staleness {results['async']['staleness'][i - 1]}")
    ratio = results["async"]["step_s"] / results["sync"]["step_s"]
    print(f"\nasync/sync step time: {ratio:.2f}x (median after {args.warmup} warm-up steps; rollout on core "
          f"{args.rollout_core}, learner on core {args.learner_core})")
    import torch

    (out / "async_rollout.json").write_text(json.dumps({
        "results": results, "ratio_async_over_sync": ratio, "loadavg": os.getloadavg(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "args": {k: str(v) for k, v in vars(args).items()},
    }, indent=2))
    print(f"details: {out / 'async_rollout.json'}")


if __name__ == "__main__":
    main()
