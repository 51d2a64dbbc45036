"""Our math verifier (rewards.math) vs Hugging Face math-verify, side by side.

    python benchmarks/verifier.py [--out results.json] [--gsm8k-limit N] [--math500-limit N]

(a) Labelled set (benchmarks/data/verifier_cases.jsonl, labels by hand): accuracy overall and per
    category, and every case where either verifier disagrees with the label.
(b) Perturbed references: MATH-500 (all 500) and GSM8K (first 400 by default) gold answers
    against generated predictions whose label is known by construction (equivalent rewrites:
    \\dfrac, decimals <-> fractions, thousands separators, units, "x = ...", answer phrasing;
    wrong: off by one, sign flip, swapped fraction, last number changed). Accuracy, checks/s,
    p50/p99 latency per check.

How each is called (same strings for both): a bare answer ``a`` becomes the response
``\\boxed{a}``; the gold is wrapped as ``\\boxed{gold}`` for math-verify, whose call is
``verify(parse(gold), parse(response))`` with its shipped defaults (signal.alarm timeouts of 5 s
for parse and verify; this script runs in the main thread, where those work). Ours is
``verify_detailed(response, gold, strategy)`` with its default Policy; its sympy worker is
started before timing (``warmup``), and both verifiers get a short untimed warm-up. Timings are
wall clock, one check at a time, the two verifiers interleaved item by item so that both see the
same load from whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import statistics
import sys
import time
from fractions import Fraction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rewards.math import extract_gold, verify_detailed, warmup  # noqa: E402
from rewards.math.sympy_pool import get_pool  # noqa: E402

CASES = os.path.join(ROOT, "benchmarks", "data", "verifier_cases.jsonl")
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "benchmarks")
_INT = re.compile(r"-?\d+")
_DEC = re.compile(r"-?\d*\.\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


# ----------------------------------------------------------------------------- runners


def run_ours(response: str, gold: str, strategy: str) -> bool:
    return verify_detailed(response, gold, strategy).correct


def make_math_verify():
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    def run(response: str, gold: str, strategy: str) -> bool:
        try:
            return bool(verify(parse("\\boxed{" + extract_gold(gold) + "}"), parse(response)))
        except Exception:
            return False

    return run


def timed_pair(fns, items):
    """Run each verifier on every item, interleaved (alternating which goes first) so both see the
    same machine load; returns per-verifier (verdicts, seconds per check)."""
    out = [([], []) for _ in fns]
    for k, (response, gold, strategy, _) in enumerate(items):
        order = range(len(fns)) if k % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            verdict = fns[i](response, gold, strategy)
            out[i][1].append(time.perf_counter() - t0)
            out[i][0].append(verdict)
    return out


def stats(verdicts, times, items) -> dict:
    correct = sum(v == it[3] for v, it in zip(verdicts, items))
    total = sum(times)
    q = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else [times[0]] * 99
    fp = sum(v and not it[3] for v, it in zip(verdicts, items))
    fn = sum((not v) and it[3] for v, it in zip(verdicts, items))
    return {
        "n": len(items),
        "accuracy": correct / len(items),
        "false_positives": fp,
        "false_negatives": fn,
        "checks_per_s": len(items) / total if total else float("inf"),
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": max(times) * 1000,
        "total_s": total,
    }


# ----------------------------------------------------------------------------- labelled set


def labelled_items(path: str):
    items, cats = [], []
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            response = row["pred"] if row["mode"] == "response" else "\\boxed{" + row["pred"] + "}"
            items.append((response, row["gold"], row.get("strategy", "auto"), bool(row["expected"])))
            cats.append(row["category"])
    return items, cats


# ----------------------------------------------------------------------------- perturbations


def _num_str(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"\\frac{{{x.numerator}}}{{{x.denominator}}}"


def _terminating(x: Fraction) -> str | None:
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return None
    s = f"{abs(x.numerator) / x.denominator:.12f}".rstrip("0").rstrip(".")
    return ("-" if x < 0 else "") + s


def perturb(gold: str, rng: random.Random, gsm8k: bool):
    """(prediction, expected) pairs for one gold answer; labels hold by construction."""
    g = gold.strip()
    same, wrong = [], []
    value = None
    if _INT.fullmatch(g):
        value = Fraction(int(g))
    elif _DEC.fullmatch(g):
        value = Fraction(g)
    elif _FRAC.fullmatch(g):
        m = _FRAC.fullmatch(g)
        value = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    if value is not None:
        if value.denominator == 1:
            n = value.numerator
            same += [f"{n}.0", f"x = {n}", f"{n}\\text{{ units}}", f"{n} dollars" if gsm8k else f"{n}\\,"]
            if abs(n) >= 1000:
                same.append(f"{n:,}")
            if gsm8k:
                same += [f"\\${n:,}", f"{n}.00"]
            wrong += [str(n + 1), str(n - 1), str(n * 10 if n else 7)]
            if n:
                wrong.append(str(-n))
        else:
            a, b = value.numerator, value.denominator
            same += [f"{a}/{b}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\tfrac{{{a}}}{{{b}}}", f"x = {_num_str(value)}"]
            dec = _terminating(value)
            if dec and dec != g:
                same.append(dec)
            if dec and dec == g:
                same.append(_num_str(value))
            if abs(a) > b and a > 0:
                same.append(f"{a // b}\\frac{{{a % b}}}{{{b}}}")
            if abs(a) != b:
                wrong.append(_num_str(Fraction(b, a)))
            wrong += [_num_str(-value), _num_str(value + 1), _num_str(Fraction(a + 1, b))]
    else:
        if "\\frac" in g and "\\dfrac" not in g:
            same.append(g.replace("\\frac", "\\dfrac"))
        if "\\left" in g:
            same.append(g.replace("\\left", "").replace("\\right", ""))
        text = re.fullmatch(r"\\text\{([^{}]*)\}", g)
        if text:
            same.append(text.group(1))
        if g.endswith("^\\circ"):
            same.append(g[: -len("^\\circ")] + " degrees")
        if not re.search(r"[,=<>_]|\\(?:in|cup|pm|text|begin|circ|infty)\b|^[(\[]", g):  # one scalar expression
            same.append(f"\\left({g}\\right)")
            wrong.append(f"-({g})")
        squeezed = re.sub(r"(?<=[^A-Za-z\s])\s+(?=[^A-Za-z\s])", "", g)  # spaces between non-letters
        if squeezed != g:
            same.append(squeezed)
        runs = [m for m in re.finditer(r"\d+", g) if g[max(0, m.start() - 1)] not in "^_[."]
        if runs and not re.search(r"\d[.,]\d", g):  # change the last number (not an exponent/subscript)
            m = runs[-1]
            wrong.append(g[: m.start()] + str(int(m.group()) + 1).zfill(len(m.group())) + g[m.end() :])
    k = 2
    picks = [(p, True) for p in rng.sample(same, min(k, len(same)))]
    picks += [(p, False) for p in rng.sample(wrong, min(k, len(wrong)))]
    return picks


def perturbed_items(path: str, limit: int | None, gsm8k: bool, seed: int):
    rng = random.Random(seed)
    with open(path) as fh:
        rows = [json.loads(line) for line in fh]
    if limit:
        rows = rows[:limit]
    items = []
    for row in rows:
        for pred, expected in perturb(row["answer"], rng, gsm8k):
            style = rng.random()
            if gsm8k and style < 0.25:
                response = f"So the total is {pred}.\n#### {pred}"
            elif style < 0.5:
                response = f"Putting it together, the answer is $\\boxed{{{pred}}}$."
            elif style < 0.75:
                response = f"We compute step by step.\nThe final answer is ${pred}$."
            else:
                response = "\\boxed{" + pred + "}"
            items.append((response, row["answer"], "auto", expected))
    return items


# ----------------------------------------------------------------------------- report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--math500-limit", type=int, default=None)
    ap.add_argument("--gsm8k-limit", type=int, default=400, help="first N GSM8K test rows (0: all 1319)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the full results as JSON here")
    args = ap.parse_args()

    warmup()
    get_pool().run("sleep", 0, 60)  # block until the sympy worker is ready (not timed)
    mv = make_math_verify()
    for fn in (run_ours, mv):  # untimed warm-up: imports, grammar construction, caches
        for resp, gold in (("\\boxed{1/2}", "0.5"), ("\\boxed{x^2+1}", "1+x^2"), ("\\boxed{(1,2]}", "(1,2]")):
            fn(resp, gold, "auto")
    results: dict = {"config": vars(args)}

    started = time.perf_counter()
    items, cats = labelled_items(args.cases)
    (ours_v, ours_t), (mv_v, mv_t) = timed_pair((run_ours, mv), items)
    per_cat = {}
    for cat in sorted(set(cats)):
        idx = [i for i, c in enumerate(cats) if c == cat]
        per_cat[cat] = {
            "n": len(idx),
            "ours": sum(ours_v[i] == items[i][3] for i in idx) / len(idx),
            "math_verify": sum(mv_v[i] == items[i][3] for i in idx) / len(idx),
        }
    disagreements = [
        {"category": cats[i], "response": items[i][0], "gold": items[i][1], "expected": items[i][3],
         "ours": ours_v[i], "math_verify": mv_v[i]}
        for i in range(len(items)) if ours_v[i] != items[i][3] or mv_v[i] != items[i][3]
    ]
    results["labelled"] = {"ours": stats(ours_v, ours_t, items), "math_verify": stats(mv_v, mv_t, items),
                           "per_category": per_cat, "disagreements": disagreements}

    pert = {}
    for name, fname, limit, gsm in (("math500", "math500.jsonl", args.math500_limit, False),
                                    ("gsm8k", "gsm8k_test.jsonl", args.gsm8k_limit, True)):
        its = perturbed_items(os.path.join(args.data, fname), limit, gsm, args.seed)
        (ov, ot), (mvv, mvt) = timed_pair((run_ours, mv), its)
        pert[name] = {"ours": stats(ov, ot, its), "math_verify": stats(mvv, mvt, its),
                      "ours_errors": [(r, g, e) for (r, g, _, e), v in zip(its, ov) if v != e][:40],
                      "math_verify_errors": [(r, g, e) for (r, g, _, e), v in zip(its, mvv) if v != e][:40]}
    results["perturbed"] = pert
    results["sympy_pool"] = dict(get_pool().stats)
    results["wall_s"] = time.perf_counter() - started
    _print(results)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


def _print(res: dict) -> None:
    lab = res["labelled"]
    print(f"\n## Labelled set ({lab['ours']['n']} cases)\n")
    print("| category | n | ours | math-verify |\n|---|---:|---:|---:|")
    for cat, r in lab["per_category"].items():
        print(f"| {cat} | {r['n']} | {r['ours']:.3f} | {r['math_verify']:.3f} |")
    print(f"| **all** | {lab['ours']['n']} | **{lab['ours']['accuracy']:.3f}** | **{lab['math_verify']['accuracy']:.3f}** |")
    print("\nDisagreements with the label (o = ours, m = math-verify):")
    for d in lab["disagreements"]:
        who = ("o" if d["ours"] != d["expected"] else "") + ("m" if d["math_verify"] != d["expected"] else "")
        print(f"  [{who:2}] {d['category']:22} expected={d['expected']!s:5} resp={d['response'][:60]!r} gold={d['gold'][:40]!r}")
    print("\n## Side by side\n")
    print("| set | verifier | n | accuracy | FP | FN | checks/s | p50 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [("labelled", lab)] + list(res["perturbed"].items())
    for name, block in rows:
        for who in ("ours", "math_verify"):
            s = block[who]
            print(f"| {name} | {who} | {s['n']} | {s['accuracy']:.4f} | {s['false_positives']} | {s['false_negatives']} | "
                  f"{s['checks_per_s']:.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.1f} |")
    print("\n| set | throughput ours/math-verify | p99 math-verify/ours |\n|---|---:|---:|")
    for name, block in rows:
        o, m = block["ours"], block["math_verify"]
        print(f"| {name} | {o['checks_per_s'] / m['checks_per_s']:.1f}x | {m['p99_ms'] / o['p99_ms']:.1f}x |")
    print(f"\nsympy worker: {res['sympy_pool']}; wall time {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
