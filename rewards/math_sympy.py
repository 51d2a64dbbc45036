"""Last-resort symbolic comparison of closed-form numeric answers (e.g. ``2\\sqrt{2}`` vs ``\\sqrt{8}``).

Model output is untrusted, so it is never handed to ``eval``/``sympify`` as is. The LaTeX is
first translated by a whitelist translator into a tiny Python-expression language (digits,
``+ - * / **``, parentheses, ``sqrt``, ``pi``); anything else is rejected. Exponents are
limited to small literals (and their number and the literal sizes are capped) so inputs like
``9^9^9^9`` cannot hang the worker. sympy is
imported lazily because it costs ~0.5 s, which would otherwise slow every worker start.
"""

from __future__ import annotations

import cmath
import re

from rewards.latex import match_brace, read_arg

MAX_LEN = 200
_MAX_POWERS = 2
_MAX_DIGITS = 30
_ALLOWED_NAMES = frozenset({"sqrt", "pi"})
_SAFE_CHARS = re.compile(r"[0-9.+\-*/() a-z]*")
_POW = re.compile(r"\*\*")
_SMALL_EXPONENT = re.compile(r"\s*(?:\d{1,2}|\(\s*-?\d{1,2}(?:\s*/\s*\d{1,2})?\s*\))(?!\s*\*\*)")


class _Reject(Exception):
    pass


def latex_to_safe_expr(s: str) -> str | None:
    """Translate a normalised answer into the restricted expression language, or None."""
    if not isinstance(s, str) or not s or len(s) > MAX_LEN:
        return None
    try:
        expr = _convert(s, 0).replace("^", "**")
    except _Reject:
        return None
    return expr if _is_safe(expr) else None


def sympy_equal(a: str, b: str, rel_tol: float = 1e-9) -> bool:
    """True if both answers are safe closed-form numbers that sympy shows equal (or numerically close)."""
    ea, eb = _parse(a), _parse(b)
    if ea is None or eb is None:
        return False
    import sympy

    bad = (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo)
    if any(e.has(*bad) for e in (ea, eb)) or ea.free_symbols or eb.free_symbols:
        return False
    if sympy.simplify(ea - eb) == 0:
        return True
    va, vb = complex(sympy.N(ea, 30)), complex(sympy.N(eb, 30))
    return cmath.isclose(va, vb, rel_tol=rel_tol, abs_tol=0.0)


def _parse(s: str):
    expr = latex_to_safe_expr(s)
    if expr is None:
        return None
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        rationalize,
        standard_transformations,
    )

    # Only names the whitelisted expression can produce; no builtins reachable from eval.
    global_dict = {
        "__builtins__": {},
        "Integer": sympy.Integer,
        "Float": sympy.Float,
        "Rational": sympy.Rational,
        "Symbol": sympy.Symbol,
    }
    local_dict = {"sqrt": sympy.sqrt, "pi": sympy.pi}
    transformations = standard_transformations + (implicit_multiplication_application, rationalize)
    try:
        return parse_expr(expr, local_dict=local_dict, global_dict=global_dict, transformations=transformations)
    except Exception:  # SyntaxError, TypeError, sympy errors: all mean "not comparable"
        return None


def _convert(s: str, depth: int) -> str:
    """Whitelist translation of LaTeX to the restricted language; raises _Reject otherwise."""
    if depth > 20:
        raise _Reject
    out: list[str] = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == "\\":
            if s.startswith("\\frac", i):
                num = _arg(s, i + 5)
                den = _arg(s, num[1])
                out.append(f"(({_convert(num[0], depth + 1)})/({_convert(den[0], depth + 1)}))")
                i = den[1]
            elif s.startswith("\\sqrt", i):
                if s[i + 5 : i + 6] == "[":  # n-th roots are not supported
                    raise _Reject
                arg = _arg(s, i + 5)
                out.append(f" sqrt({_convert(arg[0], depth + 1)})")
                i = arg[1]
            elif s.startswith("\\pi", i) and not s[i + 3 : i + 4].isalpha():
                out.append(" pi ")
                i += 3
            elif s.startswith("\\cdot", i) or s.startswith("\\times", i):
                out.append("*")
                i += 5 if s.startswith("\\cdot", i) else 6
            else:
                raise _Reject
        elif ch == "{":
            end = match_brace(s, i)
            if end is None:
                raise _Reject
            out.append(f"({_convert(s[i + 1 : end], depth + 1)})")
            i = end + 1
        elif ch in "0123456789.+-*/^() ":
            out.append(ch)
            i += 1
        elif ch.isascii() and ch.isalpha():
            j = i
            while j < n and s[j].isascii() and s[j].isalpha():
                j += 1
            name = s[i:j]
            if name not in _ALLOWED_NAMES:
                raise _Reject
            out.append(f" {name} ")
            i = j
        else:
            raise _Reject
    return "".join(out)


def _arg(s: str, idx: int) -> tuple[str, int]:
    got = read_arg(s, idx)
    if got is None:
        raise _Reject
    return got


def _is_safe(expr: str) -> bool:
    if not expr.strip() or len(expr) > 4 * MAX_LEN or not _SAFE_CHARS.fullmatch(expr):
        return False
    if not set(re.findall(r"[a-z]+", expr)) <= _ALLOWED_NAMES:
        return False
    if any(len(run) > _MAX_DIGITS for run in re.findall(r"[0-9]+", expr)):
        return False
    powers = list(_POW.finditer(expr))
    if len(powers) > _MAX_POWERS:
        return False
    return all(_SMALL_EXPONENT.match(expr, m.end()) for m in powers)
