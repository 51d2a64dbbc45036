"""Benchmark metrics from n scored samples per problem: accuracy with a CI, pass@k, maj@k.

Definitions (per benchmark of m problems, n samples each, c_i of them correct on problem i):

- ``accuracy``: mean over problems of the per-problem accuracy c_i / n (= mean over all samples).
  ``accuracy_ci95`` is a normal-approximation 95% interval *over problems*:
  mean ± 1.96 · SE, SE = sample std of the per-problem accuracies (ddof=1) / sqrt(m), clipped to
  [0, 1]. It measures how much the score would move on another draw of problems (and samples);
  it is None for m < 2.
- ``pass@k``: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over
  problems; computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms large binomials.
  pass@1 equals ``accuracy``.
- ``maj@k``: majority vote over the extracted answers of k samples. Answers are grouped by a
  canonical key (exact value for numbers, normalised text otherwise); samples without an answer
  do not vote; no answers at all counts as wrong. A tie between the top answers counts as the
  fraction of them that is correct (the expected score of a uniformly random tie-break, so the
  result does not depend on sample order). With k < n the n samples are cut into n // k disjoint
  blocks of k consecutive samples (leftovers unused) and the block scores are averaged: every
  sample is used, samples are i.i.d. so each block is an unbiased draw, and the result is
  deterministic.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction
from typing import Sequence

Z95 = 1.96

__all__ = ["pass_at_k", "majority_correct", "maj_at_k", "mean_ci", "answer_key", "default_ks", "summarize"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def answer_key(answer) -> str | None:
    """Canonical vote key: '0.5', '1/2' and '\\frac{1}{2}' vote together; None = no answer."""
    if answer is None:
        return None
    text = re.sub(r"\s+", "", _clean(str(answer)))
    if not text:
        return None
    value = _number(text)
    return f"#{value.numerator}/{value.denominator}" if value is not None else text


def _clean(text: str) -> str:
    """The math verifier's value-neutral cleaning (units, $, \\text, thousands separators...)."""
    from rewards.math.normalize import clean

    try:
        return clean(text).text
    except Exception:  # noqa: BLE001 - a vote key must never fail on odd model output
        return text.strip()


_FRAC = re.compile(r"(-?)\\[dt]?frac(?:\{(-?[\d.]+)\}|(\d))(?:\{(-?[\d.]+)\}|(\d))")
_PLAIN_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d{1,3})?(/[-+]?\d+\.?\d*)?", re.IGNORECASE)


def _number(text: str) -> Fraction | None:
    """Exact value of a plain number, a/b or \\frac{a}{b} (bounded: long or odd strings are not numbers)."""
    if len(text) > 64:
        return None
    try:
        m = _FRAC.fullmatch(text)
        if m:
            value = Fraction(m.group(2) or m.group(3)) / Fraction(m.group(4) or m.group(5))
            return -value if m.group(1) else value
        if _PLAIN_NUMBER.fullmatch(text):
            return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def majority_correct(keys: Sequence[str | None], correct: Sequence[bool]) -> float:
    """Score of the majority answer among these samples (ties: fraction of tied answers correct)."""
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [key for key, count in votes.items() if count == top]
    scores = []
    for key in winners:  # samples sharing a key share a verdict; average in case a reward disagrees
        verdicts = [bool(ok) for k, ok in zip(keys, correct) if k == key]
        scores.append(sum(verdicts) / len(verdicts))
    return sum(scores) / len(scores)


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """Mean majority-vote score over the n // k disjoint blocks of k consecutive samples."""
    n = len(keys)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    blocks = n // k
    return sum(majority_correct(keys[b * k:(b + 1) * k], correct[b * k:(b + 1) * k]) for b in range(blocks)) / blocks


def mean_ci(values: Sequence[float], z: float = Z95, lo: float = 0.0, hi: float = 1.0) -> tuple[float, list[float] | None, float | None]:
    """(mean, [low, high] normal-approximation interval clipped to [lo, hi], standard error)."""
    m = len(values)
    if m == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(values) / m
    if m < 2:
        return mean, None, None
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    se = math.sqrt(var / m)
    return mean, [max(lo, mean - z * se), min(hi, mean + z * se)], se


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def summarize(problems: list[dict], ks: Sequence[int]) -> dict:
    """Metrics of one benchmark from per-problem ``{"correct": [bool]*n, "keys": [...], "lengths": [...],
    "truncated": [bool]*n, "group": str | None}``; every problem must have the same n."""
    if not problems:
        raise ValueError("no problems to summarize")
    n = len(problems[0]["correct"])
    if any(len(p["correct"]) != n for p in problems):
        raise ValueError("every problem needs the same number of samples")
    per_problem = [sum(map(bool, p["correct"])) / n for p in problems]
    acc, ci, se = mean_ci(per_problem)
    lengths = [length for p in problems for length in p["lengths"]]
    out: dict = {
        "num_problems": len(problems), "n": n, "accuracy": acc, "accuracy_ci95": ci, "accuracy_se": se,
        "pass@k": {}, "maj@k": {},
        "response_length_mean": sum(lengths) / len(lengths) if lengths else 0.0,
        "truncated_frac": sum(t for p in problems for t in p.get("truncated", [])) / (n * len(problems)),
        "no_answer_frac": sum(k is None for p in problems for k in p["keys"]) / (n * len(problems)),
    }
    for k in sorted({int(k) for k in ks if 1 <= int(k) <= n}):
        out["pass@k"][str(k)] = sum(pass_at_k(n, sum(map(bool, p["correct"])), k) for p in problems) / len(problems)
        out["maj@k"][str(k)] = sum(maj_at_k(p["keys"], p["correct"], k) for p in problems) / len(problems)
    groups: dict[str, list[float]] = {}
    for p, a in zip(problems, per_problem):
        if p.get("group") is not None:
            groups.setdefault(str(p["group"]), []).append(a)
    if groups:
        out["accuracy_by_group"] = {g: sum(v) / len(v) for g, v in sorted(groups.items())}
    return out
