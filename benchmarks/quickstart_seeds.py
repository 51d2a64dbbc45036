"""Does the quickstart learn on any machine? Runs it over seeds and CPU kernel families.

Floating-point results differ between AVX2 and AVX-512 kernels, so a run is bit-exact only on
the machine that made it. A learning claim must hold across both: this runs
`experiments/quickstart.yaml` once per (kernel family, seed), each as its own `rlcore train`
process (ATEN_CPU_CAPABILITY=avx2 forces the older family; "default" leaves the machine's),
and prints per run the held-out greedy accuracy at the start (after SFT) and the end, the gain,
the best, the problems never seen in training, the sampled accuracy and the wall time of the
whole process (startup, SFT, RL, evals).

    python benchmarks/quickstart_seeds.py [--seeds 0 1 2] [--kernels default avx2]
        [--config experiments/quickstart.yaml] [--min-gain 0.15] [--max-wall 600]
        [--report-only] [-- extra.overrides=...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "quickstart_seeds"


def kernel_env(kernel: str) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if kernel != "default":
        env["ATEN_CPU_CAPABILITY"] = kernel
    return env


def capability(kernel: str) -> str:
    """What torch actually dispatches to under that setting (a machine without AVX-512 says avx2
    for both)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=kernel_env(kernel), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def run_one(config: str, kernel: str, seed: int, extra: list[str]) -> dict:
    name = f"{kernel}_s{seed}"
    log = RUNS / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "rlcore.cli", "train", config, f"seed={seed}",
           f"name={name}", f"output_dir={RUNS}", "overwrite=true", "tracking.progress=false", *extra]
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=kernel_env(kernel), stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    (RUNS / name / "process_wall_s.txt").write_text(f"{wall:.1f}\n")
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    return read_run(name)


def read_run(name: str) -> dict:
    run_dir = RUNS / name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    if not evals:
        raise SystemExit(f"{run_dir}: no evaluations logged")
    first, last = evals[0], evals[-1]
    wall_file = run_dir / "process_wall_s.txt"

    def get(row, key):
        value = row.get(key)
        return float(value) if value is not None else float("nan")

    return {
        "run": name, "steps": last["step"],
        "start": get(first, "eval/accuracy"), "end": get(last, "eval/accuracy"),
        "best": max(get(r, "eval/accuracy") for r in evals),
        "unseen_start": get(first, "eval/accuracy_unseen"), "unseen_end": get(last, "eval/accuracy_unseen"),
        "num_unseen": int(first.get("eval/num_unseen") or 0), "num_eval": int(first.get("eval/num_prompts") or 0),
        "sampled_start": get(first, "eval/accuracy_sampled"), "sampled_end": get(last, "eval/accuracy_sampled"),
        "wall_s": float(wall_file.read_text()) if wall_file.is_file() else get(last, "time/wall_s"),
    }


def report(results: list[dict], min_gain: float, max_wall: float) -> str:
    head = (f"{'run':<14}{'steps':>6}{'start':>8}{'end':>8}{'gain':>8}{'best':>8}"
            f"{'unseen s->e':>14}{'sampled s->e':>15}{'wall s':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['run']:<14}{r['steps']:>6}{r['start']:>8.3f}{r['end']:>8.3f}{r['end'] - r['start']:>+8.3f}"
            f"{r['best']:>8.3f}{r['unseen_start']:>7.3f}->{r['unseen_end']:.3f}"
            f"{r['sampled_start']:>8.3f}->{r['sampled_end']:.3f}{r['wall_s']:>8.0f}"
        )
    gains = [r["end"] - r["start"] for r in results]
    walls = [r["wall_s"] for r in results]
    ok = sum(g >= min_gain and w <= max_wall for g, w in zip(gains, walls))
    n_unseen = sorted({r["num_unseen"] for r in results})
    lines += [
        "",
        f"eval: {results[0]['num_eval']} problems, of which {'/'.join(map(str, n_unseen))} never occur in training",
        f"gain (greedy, end - start): {min(gains):+.3f} .. {max(gains):+.3f}; "
        f"sampled end: {min(r['sampled_end'] for r in results):.3f} .. {max(r['sampled_end'] for r in results):.3f}; "
        f"wall: {min(walls):.0f} .. {max(walls):.0f} s",
        f"{ok} of {len(results)} runs gained >= {min_gain:+.2f} within {max_wall:.0f} s",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/quickstart.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kernels", nargs="+", default=["default", "avx2"], help="'default' and/or ATEN_CPU_CAPABILITY values")
    ap.add_argument("--min-gain", type=float, default=0.15)
    ap.add_argument("--max-wall", type=float, default=600.0)
    ap.add_argument("--report-only", action="store_true", help="read the runs an earlier invocation left")
    ap.add_argument("overrides", nargs="*", help="config overrides passed to every run")
    args = ap.parse_args()
    results = []
    for kernel in args.kernels:
        if not args.report_only:
            print(f"kernel setting {kernel!r}: torch dispatches to {capability(kernel)}", flush=True)
        for seed in args.seeds:
            r = read_run(f"{kernel}_s{seed}") if args.report_only else run_one(args.config, kernel, seed, args.overrides)
            print(f"  {r['run']}: {r['start']:.3f} -> {r['end']:.3f} in {r['wall_s']:.0f} s", flush=True)
            results.append(r)
    text = report(results, args.min_gain, args.max_wall)
    (RUNS / "report.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
