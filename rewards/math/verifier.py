"""verify(response, gold): extraction + equivalence, with a recorded reason for every verdict.

Cost model: cleaning, parsing and exact/numeric comparison run in-process and are bounded by
input caps and size guards (no timeout needed). Only checks the in-process comparer cannot
decide go to the sympy worker pool, under ``policy.timeout_s``; a timeout is a verdict
(``VerifyResult(correct=False, reason="timeout")``), never an exception or a hang. The first
such check in a process also waits for the worker to start (about a second, not charged to the
timeout); ``rewards.math.warmup()`` starts it early.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

from rewards.math import evaluate as ev
from rewards.math.compare import Comparer, Policy
from rewards.math.extract import extract_answer_with_method, extract_gold
from rewards.math.normalize import Cleaned, canonical_text, clean
from rewards.math.parser import ParseError, parse

MAX_ANSWER_CHARS = 1000
DEFAULT_POLICY = Policy()
_HUNDRED = ("num", Fraction(100), False)


@dataclass(frozen=True)
class VerifyResult:
    """Verdict plus why: reason is one of equal, not_equal, no_answer, no_gold, timeout,
    too_large, error, sympy_error (sympy raised on a check the verdict depends on: undecided,
    not "not equal"). ``method`` says how equality was decided (string, text, exact/numeric,
    sympy) or which step failed (for sympy_error: ``sympy: <exception>``)."""

    correct: bool
    reason: str
    extracted: Optional[str] = None
    gold: Optional[str] = None
    method: Optional[str] = None

    def __bool__(self) -> bool:
        return self.correct


@dataclass(frozen=True)
class _Prepared:
    cleaned: Cleaned
    node: Any  # AST, or None if the text is not in our math language
    text_key: str


@functools.lru_cache(maxsize=8192)
def _prepare(answer: str) -> _Prepared:
    """Clean and parse once per distinct string (golds repeat across a group of samples)."""
    cleaned = clean(answer)
    try:
        node = parse(cleaned.text) if cleaned.text else None
    except (ParseError, ValueError, ZeroDivisionError, RecursionError):
        node = None
    return _Prepared(cleaned, node, canonical_text(cleaned.text))


def check_equivalence(pred: Any, gold: Any, policy: Policy | None = None) -> VerifyResult:
    """Detailed equivalence of two already-extracted answers."""
    policy = policy or DEFAULT_POLICY
    if pred is None or gold is None:
        return VerifyResult(False, "no_answer" if pred is None else "no_gold", pred, gold)
    pred, gold = str(pred), str(gold)
    if not pred.strip():
        return VerifyResult(False, "no_answer", pred, gold)
    if not gold.strip():
        return VerifyResult(False, "no_gold", pred, gold)
    if pred.strip() == gold.strip():
        return VerifyResult(True, "equal", pred, gold, "string")
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return VerifyResult(False, "too_large", pred, gold, "input length")
    try:
        verdict, method = _compare(_prepare(pred), _prepare(gold), policy)
    except ev.TooLarge as exc:
        return VerifyResult(False, "too_large", pred, gold, str(exc))
    except RecursionError:
        return VerifyResult(False, "too_large", pred, gold, "nesting")
    except Exception as exc:  # a bug must cost one sample, not the training step
        return VerifyResult(False, "error", pred, gold, f"{type(exc).__name__}: {exc}")
    if verdict in ("timeout", "sympy_error"):
        return VerifyResult(False, verdict, pred, gold, method)
    return VerifyResult(bool(verdict), "equal" if verdict else "not_equal", pred, gold, method)


def _compare(p: _Prepared, g: _Prepared, policy: Policy):
    pc, gc = p.cleaned, g.cleaned
    same_marks = pc.percent == gc.percent or policy.percent != "value"
    if pc.text == gc.text and same_marks:
        return True, "string"
    if p.node is None or g.node is None or p.node[0] == "text" or g.node[0] == "text":
        if p.text_key == g.text_key and same_marks:
            return True, "text"
        return False, "text"
    comparer = Comparer(policy)
    undecided = []
    for pn, gn in _percent_readings(p, g, policy):
        result = comparer.equal(pn, gn)
        if result:
            return True, "exact/numeric"
        if result is None:
            undecided.append((pn, gn))
    if not undecided or not policy.use_sympy:
        return False, "exact/numeric" if not undecided else "undecided"
    from rewards.math.sympy_pool import get_pool

    pool = get_pool()
    deadline = time.monotonic() + policy.timeout_s  # one budget for the whole check
    sympy_error = None
    for pn, gn in undecided:
        status, value = pool.run("equal", (pn, gn, policy), max(deadline - time.monotonic(), 0.01))
        if status == "timeout":
            return "timeout", "sympy"
        if status == "error":
            raise RuntimeError(f"sympy worker: {value}")
        if status == "sympy_error":  # another reading may still decide it
            sympy_error = sympy_error or value
            continue
        if value:
            return True, "sympy"
    if sympy_error is not None:
        return "sympy_error", f"sympy: {sympy_error}"
    return False, "sympy"


def _percent_readings(p: _Prepared, g: _Prepared, policy: Policy):
    pn, gn = p.node, g.node
    pp, gp = p.cleaned.percent, g.cleaned.percent
    if policy.percent == "value":
        return [(_per_cent(pn) if pp else pn, _per_cent(gn) if gp else gn)]
    readings = [(pn, gn)]
    if policy.percent == "either" and pp != gp:
        readings.append((_per_cent(pn), gn) if pp else (pn, _per_cent(gn)))
    return readings


def _per_cent(node):
    return ("div", node, _HUNDRED)


def is_equivalent(pred: Any, gold: Any, policy: Policy | None = None) -> bool:
    """True if two extracted answers are equivalent under ``policy``. Never raises."""
    return check_equivalence(pred, gold, policy).correct


def verify_detailed(
    response: Any, gold: Any, strategy: str = "auto", policy: Policy | None = None
) -> VerifyResult:
    """Extract the final answer from ``response`` (strategy by name) and compare it with ``gold``
    (which may itself be a full solution with a box or ``####``)."""
    extracted, step = extract_answer_with_method(response, strategy) if isinstance(response, str) else (None, None)
    gold_answer = extract_gold(gold)
    if extracted is None:
        return VerifyResult(False, "no_answer", None, gold_answer)
    result = check_equivalence(extracted, gold_answer, policy)
    return VerifyResult(result.correct, result.reason, extracted, gold_answer, f"{step}:{result.method}")


def verify(response: Any, gold: Any, strategy: str = "auto", policy: Policy | None = None) -> bool:
    """One call: does the response's final answer equal the gold answer?"""
    return verify_detailed(response, gold, strategy, policy).correct
