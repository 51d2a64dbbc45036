"""First math-answer reward: last ``\\boxed{}`` answer vs ground truth, 1.0 if equivalent else 0.0.

Equivalence is deliberately conservative (normalised string match, exact rational arithmetic,
then a whitelisted sympy check for closed forms). A fuller verifier will replace it later.

Percent policy: ``\\%``/``%`` are stripped during normalisation, so ``50\\%`` equals ``50``
(the usual convention in MATH-style answer keys), and it does *not* equal ``0.5``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from rewards.latex import brace_macro_args, match_brace, read_arg, unwrap_macro
from rewards.math_sympy import MAX_LEN, sympy_equal
from rewards.registry import register_reward

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_SPACE_FORM = re.compile(r"[^\s$]+")
_TEXT_MACROS = ("text", "textbf", "textrm", "mathrm", "mbox")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_TEX_SPACING = re.compile(r"\\[,;:! ]|~")
_DFRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ)|°")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"(\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?")
_MAX_EXPONENT = 1000  # keeps exact Fractions small; larger exponents are not parsed


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces ok) or ``\\boxed 5``.

    Returns None if there is no box, or the last box is unbalanced (e.g. a truncated
    generation): an unfinished final answer must not be rescued by an earlier one.
    """
    if not isinstance(text, str):
        return None
    for match in reversed(list(_BOX.finditer(text))):
        i = match.end()
        j = i
        while j < len(text) and text[j].isspace():
            j += 1
        if j < len(text) and text[j] == "{":
            end = match_brace(text, j)
            return None if end is None else text[j + 1 : end].strip()
        if j > i:  # "\boxed 5": the answer is the next whitespace/$-delimited token
            token = _SPACE_FORM.match(text, j)
            if token is not None:
                return token.group(0)
        # "\boxed" used as a word (no argument): not an answer, look at earlier boxes.
    return None


def normalize_answer(s: Any) -> str:
    """Canonical string form of an answer, removing formatting that does not change its value."""
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


def answers_equivalent(pred: Any, gold: Any, rel_tol: float = 1e-9) -> bool:
    """True if ``pred`` and ``gold`` denote the same answer. Never raises."""
    try:
        p, g = normalize_answer(pred), normalize_answer(gold)
        if not p or not g:
            return False
        if p == g:
            return True
        if len(p) > MAX_LEN or len(g) > MAX_LEN:  # bounds the cost of parsing untrusted output
            return False
        a, b = parse_number(p), parse_number(g)
        if a is not None and b is not None:  # both rational: exact
            return a == b
        return sympy_equal(p, g, rel_tol=rel_tol)  # closed forms: symbolic, then within rel_tol
    except Exception:
        return False


@register_reward("math_answer")
def math_answer(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """1.0 if the completion's last boxed answer matches the ground truth, else 0.0."""
    extracted = extract_boxed(completion)
    gold = ground_truth
    if isinstance(gold, str) and _BOX.search(gold):  # gold given as a full solution
        gold = extract_boxed(gold) or gold
    correct = extracted is not None and answers_equivalent(extracted, gold)
    return {"score": 1.0 if correct else 0.0, "correct": correct, "extracted": extracted}


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
