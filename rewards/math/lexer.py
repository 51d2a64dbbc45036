"""Tokens and vocabulary of the answer language (shared by the parser and its callers).

The tokenizer accepts only digits, ASCII letters, LaTeX control sequences and a fixed set of
operators; anything else (quotes, unicode, other punctuation) stops parsing, so arbitrary
text can never become an expression.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_TOKENS = 600
MAX_SCI_EXPONENT = 400

_TOKEN = re.compile(
    r"(?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+(?![A-Za-z\d]))?)"
    r"|(?P<cmd>\\(?:[A-Za-z]+|.))"
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<op><=|>=|!=|\*\*|[-+*/^_=<>()\[\]{}|,;!'&%])"
    r"|(?P<space>\s+)",
    re.S,
)
FUNCS = frozenset(
    "sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh exp ln log lg abs floor ceil".split()
)
GREEK = frozenset(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
    "rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega".split()
)
REL_OPS = {"=": "=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "!=": "!=", r"\le": "<=", r"\leq": "<=",
        r"\leqslant": "<=", r"\ge": ">=", r"\geq": ">=", r"\geqslant": ">=", r"\lt": "<", r"\gt": ">",
        r"\ne": "!=", r"\neq": "!="}
MUL_OPS = {"*", r"\cdot", r"\times", r"\ast"}
ATOM_CMDS = {r"\frac", r"\sqrt", r"\binom", r"\pi", r"\infty", r"\lfloor", r"\lceil", r"\lvert",
              r"\{", r"\lbrace", r"\begin", r"\mathbb", r"\emptyset", r"\varnothing"}
INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan"}
MACROS = re.compile(r"\\(?:begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
WORDS = re.compile(r"[A-Za-z]{3,}")
MATH_WORDS = FUNCS | {"sqrt", "pi", "inf", "infty"}
MATRIX_ENVS = {"pmatrix", "bmatrix", "matrix", "Bmatrix", "vmatrix", "smallmatrix", "array"}




class ParseError(Exception):
    """The answer is not in the supported math language (compare it as text instead)."""


def tokenize(s: str) -> list[tuple[str, str, bool]]:
    """(kind, text, preceded_by_space) tokens; raises ParseError on unknown characters."""
    out: list[tuple[str, str, bool]] = []
    pos, space = 0, False
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None:
            raise ParseError(f"unexpected character {s[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "space":
            space = True
            continue
        out.append((kind, m.group(), space))
        space = False
        if len(out) > MAX_TOKENS:
            raise ParseError("too long")
    return out


def number(text: str) -> tuple:
    """Exact value of a numeric literal (``025``, ``.5``, ``1.5e3``) as a num node."""
    mant, _, exp = text.lower().partition("e")
    if exp and abs(int(exp)) > MAX_SCI_EXPONENT:
        raise ParseError("exponent too large")
    value = Fraction(mant if not mant.endswith(".") else mant[:-1] or "0")
    if exp:
        value *= Fraction(10) ** int(exp)
    return ("num", value, "." in mant and value.denominator != 1)
