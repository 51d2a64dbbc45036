"""Math-answer rewards: the completion's final answer vs the ground truth, scored 1.0 / 0.0.

All the work is done by ``rewards.math`` (extraction strategies, equivalence policy, bounded
sympy fallback); this module registers the rewards and keeps the older helper names importable.

Registered rewards (the extraction strategy can be overridden per sample with
``metadata["answer_strategy"]``):
  math_answer       last ``\\boxed{}`` only: rewards the answer format the prompt asks for
  math_answer_auto  "auto" strategy: box, ``####``, ``Answer:`` line, bold, bare answer
  gsm8k_answer      "gsm8k" strategy: ``#### N``, box, ``Answer:`` line, last number

Percent policy (``Policy.percent="either"``): ``50\\%`` equals ``50`` and ``0.5``; ``50`` does not
equal ``0.5``. See ``rewards.math.compare.Policy`` for tolerance and the other rules.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from rewards.latex import brace_macro_args, match_brace, read_arg, unwrap_macro
from rewards.math import Policy, is_equivalent, verify_detailed
from rewards.math.extract import STOP, boxed
from rewards.registry import register_reward
from rewards.schema import RewardResult

MAX_LEN = 200
_TEXT_MACROS = ("text", "textbf", "textrm", "mathrm", "mbox")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_TEX_SPACING = re.compile(r"\\[,;:! ]|~")
_DFRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ)|°")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"(\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?")
_MAX_EXPONENT = 1000
_DEFAULT_REL_TOL = 1e-9


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` in ``text`` (None if absent or truncated)."""
    if not isinstance(text, str):
        return None
    found = boxed(text)
    return None if found is STOP else found


def answers_equivalent(pred: Any, gold: Any, rel_tol: float = _DEFAULT_REL_TOL) -> bool:
    """True if ``pred`` and ``gold`` denote the same answer (``rewards.math.is_equivalent``). Never raises."""
    policy = None if rel_tol == _DEFAULT_REL_TOL else Policy(rel_tol=rel_tol)
    return is_equivalent(pred, gold, policy)


# Verdicts where the verifier itself raised (our comparer, or sympy in its worker): the reward
# could not be computed, so the item is a failed RewardResult (the pool's failure_score, counted
# in reward/failures and reward/failed_exception), not a zero for a wrong answer.
VERIFIER_FAILURES = ("error", "sympy_error")


def _score(completion: str, ground_truth: str, metadata: dict, strategy: str) -> dict | RewardResult:
    strategy = (metadata or {}).get("answer_strategy", strategy)
    res = verify_detailed(completion, ground_truth, strategy)
    if res.reason in VERIFIER_FAILURES:
        return RewardResult.failure(f"exception: math verifier {res.reason}: {res.method}")
    out = {"score": 1.0 if res.correct else 0.0, "correct": res.correct, "extracted": res.extracted}
    if res.reason in ("timeout", "too_large"):  # surfaced in RewardResult.info
        out["reason"] = res.reason
    return out


@register_reward("math_answer")
def math_answer(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """1.0 if the completion's last boxed answer matches the ground truth, else 0.0."""
    return _score(completion, ground_truth, metadata, "boxed")


@register_reward("math_answer_auto")
def math_answer_auto(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """Like ``math_answer`` but also accepts ``####``, ``Answer:`` lines, bold and bare answers."""
    return _score(completion, ground_truth, metadata, "auto")


@register_reward("gsm8k_answer")
def gsm8k_answer(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """GSM8K-style: ``#### N`` first, falling back to a box, an answer line, then the last number."""
    return _score(completion, ground_truth, metadata, "gsm8k")


# ----------------------------------------------------------------------------- legacy helpers
# The first verifier's string normaliser and exact number parser, kept for existing callers.


def normalize_answer(s: Any) -> str:
    """Legacy canonical string form of an answer, removing formatting that does not change its value."""
    if s is None:
        return ""
    s = str(s).strip()
    s = s.replace("\\$", "").replace("$", "")
    for macro in _TEXT_MACROS:
        s = unwrap_macro(s, macro)
    s = _LEFT_RIGHT.sub("", s)
    s = _TEX_SPACING.sub("", s)
    s = s.replace("{,}", ",")
    s = _DFRAC.sub(r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = brace_macro_args(s, "frac", 2)  # before removing spaces: "\frac ab" must not become "\fracab"
    s = brace_macro_args(s, "sqrt", 1)
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    while s.startswith("{") and match_brace(s, 0) == len(s) - 1:
        s = s[1:-1]
    if s.startswith("+"):
        s = s[1:]
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def parse_number(s: str) -> Fraction | None:
    """Exact value of a normalised numeric answer (ints, decimals, 1e3, a/b, \\frac{a}{b}); None otherwise."""
    try:
        return _parse_number(s, 0)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def parse_number(s: str) -> Fraction | None:
    """Exact value of a normalised numeric answer (ints, decimals, 1e3, a/b, \\frac{a}{b}); None otherwise."""
    try:
        return _parse_number(s, 0)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def _parse_number(s: str, depth: int) -> Fraction | None:
    if not s or len(s) > MAX_LEN or depth > 8:
        return None
    if s[0] in "+-":
        value = _parse_number(s[1:], depth + 1)
        return None if value is None else (-value if s[0] == "-" else value)
    if _wrapped_in_parens(s):
        return _parse_number(s[1:-1], depth + 1)
    match = _DECIMAL.fullmatch(s)
    if match:
        exponent = int(match.group(2) or 0)
        if abs(exponent) > _MAX_EXPONENT:
            return None
        return Fraction(match.group(1)) * Fraction(10) ** exponent
    if s.startswith("\\frac") and not s[5:6].isalpha():
        num = read_arg(s, 5)
        den = read_arg(s, num[1]) if num else None
        if num is None or den is None or den[1] != len(s):
            return None
        return _divide(_parse_number(num[0], depth + 1), _parse_number(den[0], depth + 1))
    if s.count("/") == 1:
        num_s, den_s = s.split("/")
        return _divide(_parse_number(num_s, depth + 1), _parse_number(den_s, depth + 1))
    return None


def _divide(num: Fraction | None, den: Fraction | None) -> Fraction | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _wrapped_in_parens(s: str) -> bool:
    if len(s) < 2 or s[0] != "(" or s[-1] != ")":
        return False
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i == len(s) - 1
    return False
