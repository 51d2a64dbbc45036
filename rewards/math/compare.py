"""Equivalence of two parsed answers: structure first (sets, tuples, intervals, matrices,
relations), then scalars (exact rationals, then high-precision numerics at sample points).

Every check answers True, False or None (cannot decide in-process). None is what goes to the
sympy worker, which runs this same class with a sympy-backed ``fallback`` (see ``sympy_pool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from rewards.math import evaluate as ev
from rewards.math.normalize import canonical_text
from rewards.math.shapes import (
    COLLECTIONS, FLIP, INF, NEG_INF, as_intervals, as_vector, assigned_value, digits, expand_pm, inf_sign,
    is_inequality, normal_form,
)

CLOSED_FORM_TOL = 1e-25  # "exact" for irrational closed forms: agreement to 25 of 40 digits
_UNORDERED = ("list", "set")
_MAX_ITEMS = 64


@dataclass(frozen=True)
class Policy:
    """How answers are compared. The defaults are for exact-answer datasets (MATH, GSM8K, AIME).

    rel_tol: relative tolerance applied only when a side contains a decimal with a fractional
        part *and* the comparison is not between two rationals (``\\sqrt2`` vs
        ``1.4142135623730951`` is equal, ``\\pi`` vs ``3.14`` is not). Two rationals always compare
        exactly unless ``exact_rationals`` is False; two irrational closed forms must agree to 25
        significant digits (computed with 40).
    percent: "either" (default): a side marked ``%`` may be read as written or divided by 100
        (``50\\%`` equals ``50`` and ``0.5``; ``50`` does not equal ``0.5``); "strip": ``%`` is
        ignored (``50\\%`` == ``50`` only); "value": ``x%`` means ``x/100`` only.
    allow_assignment: a bare value equals ``symbol = value`` (gold ``5``, prediction ``x=5``).
    timeout_s: wall-clock bound for a check that needs the sympy worker.
    use_sympy: send undecided checks to the sympy worker (False: undecided means not equal).
    """

    rel_tol: float = 1e-9
    exact_rationals: bool = True
    percent: str = "either"
    allow_assignment: bool = True
    timeout_s: float = 2.0
    use_sympy: bool = True

    @classmethod
    def approximate(cls, rel_tol: float = 1e-2, **kw) -> "Policy":
        """For answers given to a few significant figures (physics-style): 3.14 equals pi at 1e-2."""
        return cls(rel_tol=rel_tol, exact_rationals=False, **kw)

    def __post_init__(self):
        if self.percent not in ("either", "strip", "value"):
            raise ValueError(f"percent must be 'either', 'strip' or 'value', got {self.percent!r}")


def _no_fallback(kind, *args):
    return None


class Comparer:
    """Three-valued structural comparison under a policy."""

    def __init__(self, policy: Policy, fallback=_no_fallback):
        self.policy = policy
        self.fallback = fallback

    # ------------------------------------------------------------------ dispatch
    def equal(self, p, g):
        if p == g:
            return True
        p, g = expand_pm(p), expand_pm(g)
        if p[0] == "text" or g[0] == "text":
            return p[0] == g[0] and _canon(p[1]) == _canon(g[1])
        if self.policy.allow_assignment:
            if p[0] == "rel" and g[0] != "rel":
                p = assigned_value(p) or p
            elif g[0] == "rel" and p[0] != "rel":
                g = assigned_value(g) or g
        for a, b in ((p, g), (g, p)):  # interval answers written as inequalities
            if a[0] in ("seq", "union", "reals") and is_inequality(b):
                conv = as_intervals(b)
                if conv is None:
                    return False
                return self.equal(a, conv) if a is p else self.equal(conv, a)
        tp, tg = p[0], g[0]
        if tp == "rel" and tg == "rel":
            return self.relation(p, g)
        if tp in _UNORDERED and tg in _UNORDERED:
            return self.unordered(p[1], g[1])
        if tp == "union" and tg == "union":
            return self.unordered(p[1], g[1])
        if tp == "seq" and tg == "seq":
            if (p[1], p[2]) != (g[1], g[2]) or len(p[3]) != len(g[3]):
                return False
            return self.ordered(p[3], g[3])
        if tp == "matrix" and tg == "matrix":
            if len(p[1]) != len(g[1]) or len(p[1][0]) != len(g[1][0]):
                return False
            return self.ordered(sum(p[1], ()), sum(g[1], ()))
        vp, vg = as_vector(p), as_vector(g)
        if vp is not None and vg is not None and tp != tg:
            return len(vp) == len(vg) and self.ordered(vp, vg)
        if tp == "set" and len(p[1]) == 1 and tg not in COLLECTIONS:  # {5} vs 5
            return self.equal(p[1][0], g)
        if tg == "set" and len(g[1]) == 1 and tp not in COLLECTIONS:
            return self.equal(p, g[1][0])
        if tp == "reals" or tg == "reals":
            other = g if tp == "reals" else p
            return other[0] == "seq" and other[1:3] == ("(", ")") and other[3] == (NEG_INF, INF)
        if tp == "based" or tg == "based":
            return digits(p) is not None and digits(p) == digits(g) and (
                tp != tg or p[2] == g[2])
        if tp in COLLECTIONS or tg in COLLECTIONS or tp in _UNORDERED or tg in _UNORDERED:
            return False
        return self.scalar(p, g)

    def ordered(self, ps, gs):
        unknown = False
        for a, b in zip(ps, gs):
            r = self.equal(a, b)
            if r is False:
                return False
            unknown |= r is None
        return None if unknown else True

    def unordered(self, ps, gs):
        """Set equality (mutual inclusion); lists of solutions are compared as sets too."""
        if len(ps) > _MAX_ITEMS or len(gs) > _MAX_ITEMS:
            return False
        cache: dict = {}

        def covered(a_items, b_items, flip):
            unknown = False
            for i, a in enumerate(a_items):
                seen_unknown = False
                for j, b in enumerate(b_items):
                    key = (j, i) if flip else (i, j)
                    if key not in cache:
                        cache[key] = self.equal(b, a) if flip else self.equal(a, b)
                    if cache[key]:
                        break
                    seen_unknown |= cache[key] is None
                else:
                    if not seen_unknown:
                        return False
                    unknown = True
            return None if unknown else True

        first = covered(ps, gs, False)
        if first is False:
            return False
        second = covered(gs, ps, True)
        if second is False:
            return False
        return True if first and second else None

    # ------------------------------------------------------------------ relations
    def relation(self, p, g):
        (p_ops, p_args), (g_ops, g_args) = p[1:], g[1:]
        if len(p_ops) > 1 or len(g_ops) > 1:
            ip, ig = as_intervals(p), as_intervals(g)
            if ip is not None and ig is not None:
                return self.equal(ip, ig)
            if p_ops == g_ops and len(p_args) == len(g_args):
                return self.ordered(p_args, g_args)
            flipped = tuple(FLIP[o] for o in reversed(p_ops))
            if flipped == g_ops and len(p_args) == len(g_args):
                return self.ordered(tuple(reversed(p_args)), g_args)
            return False
        fp, op_p = normal_form(p)
        fg, op_g = normal_form(g)
        if op_p != op_g:
            return False
        ap, ag = assigned_value(p, keep_symbol=True), assigned_value(g, keep_symbol=True)
        if ap and ag and ap[0] == ag[0] and op_p == "=":
            return self.equal(ap[1], ag[1])
        result = self.proportional(fp, fg, positive=op_p in (">", ">="))
        if result is False and op_p == "=" and not (ap and ag):
            syms = ev.free_symbols(fp) | ev.free_symbols(fg)
            if len(syms) == 1:  # e.g. (x-2)^2 = 0 vs x = 2: same solution set
                return self.fallback("eqset", fp, fg, next(iter(syms)))
        if result is None:
            return self.fallback("rel", fp, fg, op_p)
        return result

    def proportional(self, f, g, positive: bool):
        """f = c*g for a constant c (> 0 if ``positive``), tested at sample points."""
        syms = ev.free_symbols(f) | ev.free_symbols(g)
        if not syms:
            return None
        cplx = ev.uses_imaginary(f) or ev.uses_imaginary(g)
        tol = self.policy.rel_tol if (ev.is_approximate(f) or ev.is_approximate(g)) else 1e-20
        points = ev.sample_points(syms, ev.needs_wide_sampling(f, g))
        use_fractions = True  # rational functions: exact ratios, whatever the coefficient sizes
        ratio, valid = None, 0
        for point in points:
            try:
                if use_fractions:
                    try:
                        vf, vg = ev.exact(f, point), ev.exact(g, point)
                    except (ev.NotExact, ev.TooLarge):
                        use_fractions, ratio, valid = False, None, 0
                if not use_fractions:
                    env = ev.point_env(point)
                    vf, vg = _num(f, env, cplx), _num(g, env, cplx)
            except ev.Undefined:
                continue
            if vg == 0 or vf == 0:
                if vg == 0 and vf == 0:
                    continue
                return False
            r = vf / vg
            if ratio is None:
                ratio = r
            elif r != ratio and (use_fractions or not ev.close(r, ratio, tol)):
                return False
            valid += 1
        if valid < 3:
            return None
        if positive:
            return bool(ratio > 0) if use_fractions else bool(ev.base_ctx().im(ratio) == 0 and ratio > 0)
        return True

    # ------------------------------------------------------------------ scalars
    def scalar(self, p, g):
        sp, sg = inf_sign(p), inf_sign(g)
        if sp or sg:
            return sp == sg
        if ev.has_tag(p, "pm", "pct") or ev.has_tag(g, "pm", "pct") or INF in ev.walk(p) or INF in ev.walk(g):
            return False
        try:
            ep, eg = ev.exact(p), ev.exact(g)
        except ev.NotExact:
            pass
        except ev.Undefined:
            return False
        else:
            if self.policy.exact_rationals:
                return ep == eg
            return ep == eg or abs(ep - eg) <= Fraction(self.policy.rel_tol) * max(abs(ep), abs(eg))
        approx = ev.is_approximate(p) or ev.is_approximate(g) or not self.policy.exact_rationals
        tol = self.policy.rel_tol if approx else CLOSED_FORM_TOL
        syms = ev.free_symbols(p) | ev.free_symbols(g)
        try:
            if not syms:
                try:
                    return _agree(p, g, {}, True, tol)
                except ev.Undefined:
                    return False
            points = ev.sample_points(syms, ev.needs_wide_sampling(p, g))
            by_fractions = self.rational_identity(p, g, points)
            if by_fractions is not None:
                return by_fractions
            cplx = ev.uses_imaginary(p) or ev.uses_imaginary(g)
            valid = 0
            for point in points:
                try:
                    if not _agree(p, g, point, cplx, tol):
                        return False
                except ev.Undefined:
                    continue
                valid += 1
        except _Undecided:
            return self.fallback("scalar", p, g)
        if valid >= 3:
            return True
        return self.fallback("scalar", p, g)

    def rational_identity(self, p, g, points):
        """Rational functions: exact Fraction values at rational points decide (no rounding at all)."""
        valid = 0
        for point in points:
            try:
                a, b = ev.exact(p, point), ev.exact(g, point)
            except (ev.NotExact, ev.TooLarge):
                return None
            except ev.Undefined:
                continue
            equal = a == b or (not self.policy.exact_rationals
                               and abs(a - b) <= Fraction(self.policy.rel_tol) * max(abs(a), abs(b)))
            if not equal:
                return False
            valid += 1
        return True if valid >= 3 else None


# ---------------------------------------------------------------------- helpers


def _num(node, env, cplx, ctx=None, track=None):
    try:
        return ev.numeric(node, env, cplx, ctx, track)
    except (ValueError, ZeroDivisionError, ArithmeticError, TypeError) as exc:
        raise ev.Undefined(str(exc)) from None


class _Undecided(Exception):
    """Numerics cannot settle this within the precision budget (send it to sympy)."""


_SAFE_LOSS_BITS = 40
_MAX_LOSS_BITS = 6000


def _agree(p, g, point, cplx, tol) -> bool:
    """Values agree at ``point`` (a dict of Fractions; empty for constants)."""
    exact_mode = tol == CLOSED_FORM_TOL
    track = [0]
    ctx = ev.base_ctx()
    env = ev.point_env(point, ctx)
    a, b = _num(p, env, cplx, ctx, track), _num(g, env, cplx, ctx, track)
    loss = track[0]
    if loss > _SAFE_LOSS_BITS:  # absorption/cancellation/huge arguments: redo with room for it
        if loss > _MAX_LOSS_BITS:
            raise _Undecided
        ctx = ev.context(2 * loss + 200)
        env = ev.point_env(point, ctx)
        a, b = _num(p, env, cplx, ctx), _num(g, env, cplx, ctx)
        if exact_mode:
            tol = ctx.ldexp(1, -(loss + 140))
    if ev.close(a, b, tol):
        return True
    return exact_mode and _zero_noise(a, b, p, g, point, cplx, ctx)


def _zero_noise(a, b, p, g, point, cplx, ctx) -> bool:
    """``\\sin(\\pi)`` vs 0: a tiny difference that shrinks with more precision is rounding noise."""
    if abs(a - b) > ctx.ldexp(1, -(ctx.prec * 2 // 3)):
        return False
    hi = ev.context(2 * ctx.prec)
    env = ev.point_env(point, hi)
    a2, b2 = _num(p, env, cplx, hi), _num(g, env, cplx, hi)
    return abs(a2 - b2) <= abs(a - b) * hi.ldexp(1, -(ctx.prec // 2))


def _canon(s: str) -> str:
    return canonical_text(s)
