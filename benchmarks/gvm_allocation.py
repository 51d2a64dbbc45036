"""How many generated samples does GVM allocation need to reach a target accuracy, against
uniform allocation with the same algorithm, seed, start model and data?

GVM-RAFT (arXiv:2505.02391) reports 2-4x fewer samples. This runs the uniform/GVM pairs of a
compare spec side by side in one `rlcore compare` invocation (or, with --report-only, reads the
runs an earlier `rlcore compare experiments/compare_arith.yaml` left behind) and prints, per
target accuracy, the samples each needed and the ratio uniform / GVM (> 1: GVM needed fewer).
Accuracy is the spec's held-out metric, evaluated every `eval.every` steps, so "samples to reach"
is resolved only to one eval interval.

Last, per pair, the headline: per seed, the samples each arm needed to reach the best accuracy
the weaker arm reached, their ratio, and its mean over seeds (pre-samples counted; the lines
before it also give the ratio with GVM's pre-samples left out). Accuracies there are the mean
of each eval and the two before it (--smooth): single evals swing by several points.

    python benchmarks/gvm_allocation.py [--spec experiments/compare_gvm_spread.yaml]
        [--pairs grpo:grpo_gvm,grpo:grpo_gvm_xs,raftpp:raftpp_gvm] [--targets 0.25,0.3,0.35,0.4] [--report-only]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from rlcore.compare import load_spec, run_compare, run_id  # noqa: E402
from rlcore.report import eval_points  # noqa: E402


def samples_to_reach(points: list[dict], target: float, key: str = "samples") -> int | None:
    for p in points:
        if p["accuracy"] >= target:
            return int(p[key])
    return None


def weaker_arm_target(a: list[dict], b: list[dict]) -> float | None:
    """The best accuracy the weaker arm reached (so both reached it); None unless it is above the
    start, where both arms stand at 0 samples."""
    if not a or not b:
        return None
    target = min(max(p["accuracy"] for p in a), max(p["accuracy"] for p in b))
    return target if target > max(a[0]["accuracy"], b[0]["accuracy"]) else None


def smoothed(points: list[dict], window: int) -> list[dict]:
    """Each eval's accuracy as the mean of it and the `window - 1` before it: one eval of a few
    hundred prompts swings by several points, and the best of a raw curve is mostly that swing."""
    accs = [p["accuracy"] for p in points]
    return [{**p, "accuracy": sum(accs[max(0, i - window + 1): i + 1]) / len(accs[max(0, i - window + 1): i + 1])}
            for i, p in enumerate(points)]


def weaker_arm_ratios(spec, uniform: str, gvm: str, key: str = "samples", smooth: int = 3) -> list[dict]:
    """Per seed: samples uniform / GVM to the weaker arm's best (smoothed) accuracy (> 1: GVM
    needed fewer). key="samples" counts every generation; "trained" leaves out GVM's pre-samples."""
    out = []
    for seed in spec.seeds:
        pts = [smoothed(load_points(spec.runs_dir / run_id(name, seed), spec.metric), smooth)
               for name in (uniform, gvm)]
        for points in pts:
            for p in points:
                p["trained"] = p["samples"] - p.get("presampled", 0)
        target = weaker_arm_target(*pts)
        a, b = (samples_to_reach(p, target, key) if target is not None else None for p in pts)
        out.append({"seed": seed, "target": target, "uniform_samples": a, "gvm_samples": b,
                    "ratio": a / b if a and b else None})
    return out


def load_points(run_dir: Path, metric: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return eval_points([json.loads(line) for line in path.read_text().splitlines() if line.strip()], metric)


def compare_pair(spec, uniform: str, gvm: str, targets: list[float]) -> list[dict]:
    rows = []
    for seed in spec.seeds:
        pts = {name: load_points(spec.runs_dir / run_id(name, seed), spec.metric) for name in (uniform, gvm)}
        for target in targets:
            a, b = samples_to_reach(pts[uniform], target), samples_to_reach(pts[gvm], target)
            rows.append({
                "seed": seed, "target": target, "uniform": uniform, "gvm": gvm,
                "uniform_samples": a, "gvm_samples": b,
                "ratio_uniform_over_gvm": (a / b) if a and b else None,
                "uniform_final": pts[uniform][-1]["accuracy"] if pts[uniform] else None,
                "gvm_final": pts[gvm][-1]["accuracy"] if pts[gvm] else None,
                "uniform_total_samples": pts[uniform][-1]["samples"] if pts[uniform] else None,
                "gvm_total_samples": pts[gvm][-1]["samples"] if pts[gvm] else None,
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=str(ROOT / "experiments" / "compare_gvm_spread.yaml"))
    ap.add_argument("--pairs", default="grpo:grpo_gvm,grpo:grpo_gvm_xs,raftpp:raftpp_gvm")
    ap.add_argument("--targets", default="0.25,0.3,0.35,0.4")
    ap.add_argument("--report-only", action="store_true", help="read existing runs, train nothing")
    ap.add_argument("--smooth", type=int, default=3, help="headline: mean of each eval and the ones before it")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    targets = [float(t) for t in args.targets.split(",") if t]
    if not args.report_only:
        run_compare(spec, only=sorted({name for pair in pairs for name in pair}), skip_done=True)
    rows = [row for u, g in pairs for row in compare_pair(spec, u, g, targets)]
    fmt = lambda v: "not reached" if v is None else f"{v:,}"  # noqa: E731
    print(f"{'pair':<22} {'seed':>4} {'target':>6} {'uniform samples':>16} {'gvm samples':>12} {'uniform/gvm':>11}")
    for r in rows:
        ratio = f"{r['ratio_uniform_over_gvm']:.2f}x" if r["ratio_uniform_over_gvm"] else "-"
        print(f"{r['uniform'] + ' vs ' + r['gvm']:<22} {r['seed']:>4} {r['target']:>6.2f} "
              f"{fmt(r['uniform_samples']):>16} {fmt(r['gvm_samples']):>12} {ratio:>11}")
    for u, g in pairs:
        for seed in spec.seeds:  # one line per seed: the first target's row carries the finals
            f = next((r for r in rows if (r["uniform"], r["gvm"], r["seed"]) == (u, g, seed)), None)
            if f:
                print(f"final held-out accuracy, seed {seed}: {u} {f['uniform_final']} after "
                      f"{f['uniform_total_samples']} samples, {g} {f['gvm_final']} after {f['gvm_total_samples']} samples")
    summary = {}
    for u, g in pairs:
        for key, label in (("trained", "trained-on samples (pre-samples left out)"), ("samples", "samples")):
            per_seed = weaker_arm_ratios(spec, u, g, key, args.smooth)
            summary[f"{u}:{g}:{key}"] = per_seed
            for r in per_seed:
                target = "-" if r["target"] is None else f"{r['target']:.3f}"
                ratio = "n/a (the weaker arm never rose above the start)" if r["ratio"] is None else f"{r['ratio']:.2f}x"
                print(f"{label}, {u} vs {g}, seed {r['seed']}: weaker arm's best ({args.smooth}-eval mean) {target}: "
                      f"{fmt(r['uniform_samples'])} vs {fmt(r['gvm_samples'])} -> {ratio}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "weaker_arm": summary}, indent=2))
    for u, g in pairs:  # last: the headline, every generation counted
        ratios = [r["ratio"] for r in summary[f"{u}:{g}:samples"] if r["ratio"] is not None]
        if ratios:
            print(f"samples-to-target uniform/GVM: mean {sum(ratios) / len(ratios):.2f}x over {len(ratios)} seeds "
                  f"({u} vs {g}, range {min(ratios):.2f}-{max(ratios):.2f}x, every generation counted)")
        else:
            print(f"samples-to-target uniform/GVM: no seed where the weaker arm rose above the start ({u} vs {g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
