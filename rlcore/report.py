"""Comparison report: pure functions over run dirs (metrics.jsonl, summary.json) -> md / png / json.

Kept free of training imports so a report can be rebuilt (and unit-tested) from files alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from rlcore.tracking import read_metrics

# Two-sided 95% Student t quantiles (df 1..30); beyond that the normal 1.96 is within 2%.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
Z95 = 1.959964


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (well-behaved near 0 and 1, unlike p ± z·se)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def t_quantile(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else Z95


def mean_t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds (the seed-to-seed spread is the uncertainty that matters)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def eval_points(rows: list[dict], metric: str) -> list[dict]:
    """Eval rows with cumulative samples and wall time; missing counters carry forward (step 0 -> 0)."""
    samples, presampled, wall, out = 0, 0, 0.0, []
    for row in rows:
        if row.get("samples/generated") is not None:
            samples = row["samples/generated"]
        presampled += row.get("samples/step_presampled") or 0  # allocation's pre-samples, within `samples`
        if row.get("time/wall_s") is not None:
            wall = row["time/wall_s"]
        if row.get(metric) is not None:
            out.append({"step": row.get("step"), "samples": samples, "presampled": presampled, "wall_s": wall,
                        "accuracy": row[metric], "num_prompts": row.get("eval/num_prompts")})
    return out


def _status(run_dir: Path, status: dict | None) -> tuple[str, str]:
    state = (status or {}).get("status")
    if state == "failed":
        return "failed", status.get("error") or "unknown error"
    if (run_dir / "summary.json").is_file():
        return "ok", ""
    if state == "running":
        return "failed", "interrupted (no summary.json)"
    return "missing", "not run"


def summarize_run(run_dir: str | Path, metric: str, target: float | None, status: dict | None = None) -> dict:
    run_dir = Path(run_dir)
    state, error = _status(run_dir, status)
    out = {"run_dir": str(run_dir), "status": state, "error": error}
    if state != "ok":
        return out
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_metrics(run_dir)
    points = eval_points(rows, metric)
    last_samples = next((r["samples/generated"] for r in reversed(rows) if r.get("samples/generated") is not None), 0)
    last_wall = next((r["time/wall_s"] for r in reversed(rows) if r.get("time/wall_s") is not None), 0.0)
    out.update({
        "final_accuracy": points[-1]["accuracy"] if points else None,
        "num_prompts": points[-1]["num_prompts"] if points else None,
        "start_accuracy": points[0]["accuracy"] if points else None,
        # The policy moves between evaluations; the mean of the last three is less noisy.
        "last3_accuracy": _mean([p["accuracy"] for p in points[-3:]]) if points else None,
        "samples_generated": summary.get("samples_generated", last_samples),
        "wall_time_s": summary.get("wall_time_s", last_wall),
        "samples_to_target": None, "wall_s_to_target": None, "curve": points,
    })
    if target is not None:
        hit = next((p for p in points if p["accuracy"] >= target), None)
        if hit is not None:
            out["samples_to_target"], out["wall_s_to_target"] = hit["samples"], hit["wall_s"]
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(name: str, runs: list[dict], target: float | None) -> dict:
    """One table row: seeds that finished are averaged; the CI method depends on how many there are."""
    ok = [r for r in runs if r["status"] == "ok" and r.get("final_accuracy") is not None]
    bad = [r for r in runs if r not in ok]
    row = {"name": name, "seeds": [r.get("seed") for r in runs], "ok_seeds": len(ok), "runs": runs,
           "final_accuracy": None, "ci_low": None, "ci_high": None, "ci_method": None}
    if len(ok) == 1:
        r = ok[0]
        n = int(r["num_prompts"] or 0)
        row["final_accuracy"] = r["final_accuracy"]
        row["ci_low"], row["ci_high"] = wilson(round(r["final_accuracy"] * n), n) if n else (None, None)
        row["ci_method"] = "wilson" if n else None
    elif len(ok) > 1:
        mean, lo, hi = mean_t_interval([r["final_accuracy"] for r in ok])
        row["final_accuracy"], row["ci_low"], row["ci_high"] = mean, max(0.0, lo), min(1.0, hi)  # accuracy bounds
        row["ci_method"] = f"t({len(ok)} seeds)"
    reached = [r for r in ok if r.get("samples_to_target") is not None]
    row.update({
        "start_accuracy": _mean([r.get("start_accuracy") for r in ok]),
        "last3_accuracy": _mean([r.get("last3_accuracy") for r in ok]),
        "samples_generated": _mean([r.get("samples_generated") for r in ok]),
        "wall_time_s": _mean([r.get("wall_time_s") for r in ok]),
        "target_reached_seeds": len(reached) if target is not None else None,
        "samples_to_target": _mean([r["samples_to_target"] for r in reached]),
        "wall_s_to_target": _mean([r["wall_s_to_target"] for r in reached]),
    })
    if not bad:
        row["status"] = "ok"
    else:
        reasons = "; ".join(f"s{r.get('seed')}: {r['error']}" for r in bad)
        row["status"] = f"{bad[0]['status']} ({len(bad)}/{len(runs)}): {reasons}"
    return row


def build(configs: list[dict], meta: dict) -> dict:
    """configs: [{name, runs: [{seed, run_dir, status}]}] -> report dict (also report.json)."""
    target, metric = meta.get("target_accuracy"), meta.get("metric", "eval/accuracy")
    rows = []
    for cfg in configs:
        runs = [{"seed": r["seed"], **summarize_run(r["run_dir"], metric, target, r.get("status"))} for r in cfg["runs"]]
        rows.append(aggregate(cfg["name"], runs, target))
    return {"meta": meta, "configs": rows}


def _fmt_num(v, digits=0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _fmt_min(seconds) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    meta, rows = report["meta"], report["configs"]
    target = meta.get("target_accuracy")
    tgt = f"{target:g}" if target is not None else "—"
    budget = f"{meta['budget_samples']:,} samples per run" if meta.get("budget_samples") else "none (step count)"
    lines = [
        f"# Comparison: {meta.get('name', '')}", "",
        f"Budget: {budget} · seeds: {', '.join(map(str, meta.get('seeds', [])))} · base: `{meta.get('base')}` · "
        f"metric: `{meta.get('metric')}` · target: {tgt} · shared start: {'yes' if meta.get('shared_start') else 'no'}",
    ]
    if meta.get("overrides"):
        lines += ["", f"Common overrides: `{' '.join(meta['overrides'])}`"]
    shared = meta.get("shared_status")
    if shared and shared.get("status") == "failed":
        lines += ["", f"Shared start FAILED: {shared.get('error')}"]
    lines += ["", f"| Config | Final acc (95% CI) | Last 3 evals | Start acc | Samples | Wall time | Samples to {tgt} | "
                  f"Time to {tgt} | Status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["final_accuracy"] is None:
            acc = "—"
        elif r["ci_low"] is None:
            acc = f"{r['final_accuracy']:.3f}"
        else:
            acc = f"{r['final_accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        start = "—" if r["start_accuracy"] is None else f"{r['start_accuracy']:.3f}"
        last3 = "—" if r.get("last3_accuracy") is None else f"{r['last3_accuracy']:.3f}"
        if target is None or not r["ok_seeds"]:
            s_tgt = t_tgt = "—"
        elif r["samples_to_target"] is None:
            s_tgt = t_tgt = "not reached"
        else:
            part = "" if r["target_reached_seeds"] == r["ok_seeds"] else f" ({r['target_reached_seeds']}/{r['ok_seeds']} seeds)"
            s_tgt, t_tgt = _fmt_num(r["samples_to_target"]) + part, _fmt_min(r["wall_s_to_target"]) + part
        cells = [r["name"], acc, last3, start, _fmt_num(r["samples_generated"]), _fmt_min(r["wall_time_s"]), s_tgt, t_tgt,
                 r["status"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    wil = [r["name"] for r in rows if r["ci_method"] == "wilson"]
    tint = [r["name"] for r in rows if (r["ci_method"] or "").startswith("t(")]
    note = ["", "Final acc is the last evaluation of the metric, Last 3 evals the mean of the last three; Samples and Wall time are means over the seeds that "
                "finished; targets count the first evaluation at or above the target."]
    if wil:
        note.append(f"\n95% CI, one seed: Wilson score interval on accuracy × eval/num_prompts ({', '.join(wil)}).")
    if tint:
        note.append(f"\n95% CI, several seeds: mean ± Student-t interval over seeds ({', '.join(tint)}).")
    return "\n".join(lines + note + ["", "![curves](report.png)", ""])


def mean_curve(curves: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Average seeds on a shared x grid (linear interpolation over the range every seed covers)."""
    curves = [sorted(c) for c in curves if c]
    if not curves:
        return []
    if len(curves) == 1:
        return curves[0]
    import numpy as np

    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    grid = sorted({x for c in curves for x, _ in c if lo <= x <= hi})
    ys = [np.interp(grid, [x for x, _ in c], [y for _, y in c]) for c in curves]
    return list(zip(grid, np.mean(ys, axis=0).tolist()))


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    target = report["meta"].get("target_accuracy")
    for row in report["configs"]:
        ok = [r for r in row["runs"] if r["status"] == "ok" and r.get("curve")]
        if not ok:
            continue
        label = f"{row['name']} (n={len(ok)})"
        by_samples = mean_curve([[(p["samples"], p["accuracy"]) for p in r["curve"]] for r in ok])
        by_time = mean_curve([[(p["wall_s"] / 60, p["accuracy"]) for p in r["curve"]] for r in ok])
        for ax, pts in zip(axes, (by_samples, by_time)):
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
    for ax, xlabel in zip(axes, ("samples generated", "wall time (minutes)")):
        if target is not None:
            ax.axhline(target, linestyle="--", color="gray", label=f"target {target:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"held-out {report['meta'].get('metric', 'eval/accuracy')}")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.suptitle(report["meta"].get("name", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(out_dir: str | Path, report: dict) -> Path:
    """report.md, report.png, report.json into out_dir; returns report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot(report, out_dir / "report.png")
    md = out_dir / "report.md"
    md.write_text(render_markdown(report))
    return md
