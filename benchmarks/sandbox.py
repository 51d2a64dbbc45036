"""Sandbox call latency and throughput: warm pool against a fresh sandbox per call.

    .venv/bin/python benchmarks/sandbox.py [--out runs/bench_sandbox.json] [--calls 40]

Modes (all but the last sandboxed the same way; the snippet is ``print(sum(range(100)))``):
  session      calls in one open pool session (warm interpreter, the tool-rollout path)
  pool_oneshot pool.run: each call takes a pre-started sandbox, which is then killed and
               replaced in the background (so sequential calls end up bounded by start rate)
  fresh        a new sandbox started, used once and killed per call (no pool)
  subprocess   reference: unsandboxed ``python -c`` per call
Prints a markdown table; ``--out`` also writes JSON. Runs well under a minute by default.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools_sandbox import Limits, Sandbox, SandboxPool, isolation_report  # noqa: E402
from tools_sandbox.hostcheck import leftovers  # noqa: E402

SNIPPET = "print(sum(range(100)))"


def _stats(lat: list[float], wall: float) -> dict:
    lat = sorted(lat)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    return {"calls": len(lat), "calls_per_s": len(lat) / wall, "p50_ms": 1e3 * pick(0.5),
            "p99_ms": 1e3 * pick(0.99), "mean_ms": 1e3 * statistics.fmean(lat)}


def _measure(call, n: int, budget_s: float) -> dict:
    lat, t_start = [], time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > budget_s:
            break
    return _stats(lat, time.perf_counter() - t_start)


def _check(res):
    if res.status != "ok" or res.stdout != "4950\n":
        raise RuntimeError(f"unexpected result: {res}")


def run(calls: int, workers: int, budget_s: float) -> dict:
    limits = Limits()
    out = {"snippet": SNIPPET, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
           "isolation": isolation_report(), "modes": {}}
    with SandboxPool(max_workers=workers, warm=workers, limits=limits) as pool:
        time.sleep(1.0)  # let the spares start
        with pool.session() as s:
            _check(s.run(SNIPPET))
            out["modes"]["session"] = _measure(lambda: _check(s.run(SNIPPET)), calls * 5,
                                               budget_s)
        time.sleep(1.0)
        out["modes"]["pool_oneshot"] = _measure(lambda: _check(pool.run(SNIPPET)), calls,
                                                budget_s)
        out["pool_cold_starts"] = pool.cold_starts

    def fresh():
        sb = Sandbox(limits).start()
        try:
            _check(sb.run(SNIPPET))
        finally:
            sb.close()  # kill now, reap in the background: as the pool does

    fresh()  # warm the page cache and the isolation probe
    out["modes"]["fresh"] = _measure(fresh, calls, budget_s)
    py = [sys.executable, "-I", "-c", SNIPPET]
    out["modes"]["subprocess"] = _measure(lambda: subprocess.run(py, capture_output=True,
                                                                 check=True), calls, budget_s)
    m = out["modes"]
    out["ratio_pool_oneshot_vs_fresh"] = {
        "throughput": m["pool_oneshot"]["calls_per_s"] / m["fresh"]["calls_per_s"],
        "p50_speedup": m["fresh"]["p50_ms"] / m["pool_oneshot"]["p50_ms"]}
    out["ratio_session_vs_fresh"] = {
        "throughput": m["session"]["calls_per_s"] / m["fresh"]["calls_per_s"],
        "p50_speedup": m["fresh"]["p50_ms"] / m["session"]["p50_ms"]}
    out["loadavg_end"] = os.getloadavg()
    out["leftover_processes"] = leftovers()
    return out


def table(res: dict) -> str:
    rows = ["| mode | calls | calls/s | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|"]
    for name, m in res["modes"].items():
        rows.append(f"| {name} | {m['calls']} | {m['calls_per_s']:.1f} | {m['p50_ms']:.2f} | "
                    f"{m['p99_ms']:.2f} | {m['mean_ms']:.2f} |")
    r1, r2 = res["ratio_pool_oneshot_vs_fresh"], res["ratio_session_vs_fresh"]
    rows.append("")
    rows.append(f"pool one-shot vs fresh sandbox: {r1['throughput']:.1f}x calls/s, "
                f"{r1['p50_speedup']:.1f}x lower p50; session call vs fresh: "
                f"{r2['throughput']:.0f}x calls/s, {r2['p50_speedup']:.0f}x lower p50")
    rows.append(f"cpus={res['cpus']} load average {res['loadavg_start'][0]:.1f} -> "
                f"{res['loadavg_end'][0]:.1f}; pool cold starts: {res['pool_cold_starts']}; "
                f"leftover processes: {len(res['leftover_processes'])}")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40, help="calls per mode (session: 5x)")
    ap.add_argument("--workers", type=int, default=4, help="pool max_workers and warm spares")
    ap.add_argument("--budget-s", type=float, default=12.0, help="time cap per mode")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = run(args.calls, args.workers, args.budget_s)
    print(table(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
