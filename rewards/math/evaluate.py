"""Values of parsed answers: exact rationals first, then bounded high-precision numerics.

Exact path: integers, fractions, decimals, powers, perfect roots, factorials and binomials are
computed as ``Fraction``s, so ``1/2006!`` and ``1/2004!`` differ and nothing collapses to a float.
Numeric path: everything else (radicals, pi, e, trig, logs, symbols at sample points) is evaluated
with mpmath at 40 significant digits. Both paths refuse work whose size would explode
(``TooLarge``), which is what keeps in-process checks bounded in time without a timeout.
"""

from __future__ import annotations

import math
import random
import zlib
from fractions import Fraction

MAX_BITS = 1 << 18  # largest exact intermediate (~79k decimal digits)
MAX_FACTORIAL = 5000
MAX_MAG_BITS = 1 << 20  # largest numeric magnitude, as a power of two
DPS = 40

_BASE: list = []  # the 40-digit mpmath context, created on first use (keeps `import rewards` light)


def base_ctx():
    """The default 40-significant-digit mpmath context."""
    if not _BASE:
        _BASE.append(context(0, dps=DPS))
    return _BASE[0]


class NotExact(Exception):
    """The value is not a rational number we can compute exactly."""


class TooLarge(Exception):
    """Computing the value would exceed the size bounds."""


class Undefined(Exception):
    """Division by zero, log of a non-positive number, etc. (at this point, for numerics)."""


# ----------------------------------------------------------------------------- tree queries


NODE_TAGS = frozenset(
    "num const sym add mul div pow neg func log root binom fact pm pct seq set list union matrix rel "
    "text based reals call".split()
)


def walk(node):
    """All sub-nodes of ``node`` (including itself), depth first."""
    stack = [node]
    while stack:
        n = stack.pop()
        if not (n and isinstance(n[0], str) and n[0] in NODE_TAGS):  # a tuple of nodes (or rows)
            stack.extend(c for c in n if isinstance(c, tuple))
            continue
        yield n
        stack.extend(c for c in n[1:] if isinstance(c, tuple))


def free_symbols(node) -> frozenset:
    return frozenset(n[1] for n in walk(node) if n[0] == "sym")


def has_tag(node, *tags) -> bool:
    return any(n[0] in tags for n in walk(node))


def is_approximate(node) -> bool:
    """True if the answer contains a decimal with a fractional part (a possibly rounded value)."""
    return any(n[0] == "num" and n[2] for n in walk(node))


def uses_imaginary(node) -> bool:
    return any(n == ("const", "i") for n in walk(node))


# ----------------------------------------------------------------------------- exact


def exact(node, env: dict | None = None) -> Fraction:
    """Exact rational value (symbols looked up in ``env``); raises NotExact, TooLarge or Undefined."""
    tag = node[0]
    if tag == "num":
        return node[1]
    if tag == "sym":
        if env is None or node[1] not in env:
            raise NotExact
        return env[node[1]]
    if tag == "neg":
        return -exact(node[1], env)
    if tag == "add":
        total = Fraction(0)
        for t in node[1]:
            total += exact(t, env)
        _check_bits(total)
        return total
    if tag == "mul":
        prod = Fraction(1)
        for f in node[1]:
            prod *= exact(f, env)
            _check_bits(prod)
        return prod
    if tag == "div":
        num, den = exact(node[1], env), exact(node[2], env)
        if den == 0:
            raise Undefined("division by zero")
        return num / den
    if tag == "pow":
        return _exact_pow(exact(node[1], env), exact(node[2], env))
    if tag == "root":
        n = exact(node[2], env)
        if n.denominator != 1 or n < 2:
            raise NotExact
        return _exact_pow(exact(node[1], env), Fraction(1, int(n)))
    if tag == "fact":
        n = exact(node[1], env)
        if n.denominator != 1 or n < 0:
            raise NotExact
        if n > MAX_FACTORIAL:
            raise TooLarge("factorial")
        return Fraction(math.factorial(int(n)))
    if tag == "binom":
        n, k = exact(node[1], env), exact(node[2], env)
        if n.denominator != 1 or k.denominator != 1 or n < 0 or n > 50 * MAX_FACTORIAL:
            raise NotExact
        return Fraction(math.comb(int(n), int(k)) if k >= 0 else 0)
    if tag == "func" and node[1] in ("abs", "floor", "ceil"):
        v = exact(node[2], env)
        return abs(v) if node[1] == "abs" else Fraction(math.floor(v) if node[1] == "floor" else math.ceil(v))
    raise NotExact


def _bits(x: Fraction) -> int:
    return x.numerator.bit_length() + x.denominator.bit_length()


def _check_bits(x: Fraction) -> None:
    if _bits(x) > MAX_BITS:
        raise TooLarge("exact value too large")


def _exact_pow(base: Fraction, exp: Fraction) -> Fraction:
    if base == 0:
        if exp < 0:
            raise Undefined("0 to a negative power")
        return Fraction(0) if exp > 0 else Fraction(1)
    if exp.denominator != 1:
        q = exp.denominator
        if base < 0 and q % 2 == 0:
            raise NotExact
        if _bits(base) > MAX_BITS // 4 or q > 64:
            raise NotExact
        sign = -1 if base < 0 else 1
        rn, rd = _iroot(abs(base.numerator), q), _iroot(base.denominator, q)
        if rn is None or rd is None:
            raise NotExact
        base, exp = Fraction(sign * rn, rd), Fraction(exp.numerator)
    e = int(exp)
    if abs(e) * max(_bits(base), 1) > MAX_BITS and abs(base) != 1:
        raise TooLarge("power too large")
    return base**e


def _iroot(n: int, k: int) -> int | None:
    """Exact integer k-th root of n >= 0, or None."""
    if n < 2:
        return n
    if k == 2:
        r = math.isqrt(n)
        return r if r * r == n else None
    if n.bit_length() < 1000:
        r = int(n ** (1.0 / k) * (1 + 1e-9)) + 2
    else:
        r = 1 << (n.bit_length() // k + 1)
    for _ in range(400):  # Newton iteration from above
        nxt = ((k - 1) * r + n // r ** (k - 1)) // k
        if nxt >= r:
            break
        r = nxt
    for cand in (r - 1, r, r + 1):
        if cand >= 0 and cand**k == n:
            return cand
    return None


# ----------------------------------------------------------------------------- numeric


def numeric(node, env: dict, cplx: bool, ctx=None, track: list | None = None):
    """mpmath value at the point ``env`` (symbol -> mpf). Real mode refuses complex intermediates.

    ``track`` (a one-element list) receives the worst precision loss seen, in bits: the spread
    of magnitudes inside a sum (absorption, cancellation), the size of a periodic function's
    argument, or a literal too long for the working precision. Callers re-evaluate with that
    many more bits, so ``\\sin(10^{100})`` and ``\\sin(10^{100}+1)`` are told apart.
    """
    return _numeric(node, env, cplx, ctx or base_ctx(), track)


def _loss(track, bits) -> None:
    if track is not None and bits > track[0]:
        track[0] = bits


def _numeric(node, env, cplx, ctx, track):
    tag = node[0]
    if tag == "num":
        v = node[1]
        size = max(v.numerator.bit_length(), v.denominator.bit_length())
        if size > 100:
            _loss(track, size)
        return ctx.mpf(v.numerator) / v.denominator
    if tag == "const":
        name = node[1]
        if name == "i":
            if not cplx:
                raise Undefined("imaginary in real mode")
            return ctx.mpc(0, 1)
        return {"pi": ctx.pi, "e": ctx.e, "inf": ctx.inf}[name]
    if tag == "sym":
        try:
            return env[node[1]]
        except KeyError:
            raise Undefined("unbound symbol") from None
    if tag == "neg":
        return -numeric(node[1], env, cplx, ctx, track)
    if tag == "add":
        terms = [numeric(t, env, cplx, ctx, track) for t in node[1]]
        total = ctx.fsum(terms)
        if track is not None:
            mags = [ctx.mag(t) for t in terms if t != 0 and ctx.isfinite(t)]
            if len(mags) > 1:
                top = max(mags)
                _loss(track, top - min(mags))
                if total != 0 and ctx.isfinite(total):
                    _loss(track, top - ctx.mag(total))
        return total
    if tag == "mul":
        out = ctx.mpf(1)
        for f in node[1]:
            out = out * numeric(f, env, cplx, ctx, track)
        return _guard(out, ctx)
    if tag == "div":
        num, den = numeric(node[1], env, cplx, ctx, track), numeric(node[2], env, cplx, ctx, track)
        if den == 0:
            raise Undefined("division by zero")
        return num / den
    if tag == "pow":
        return _power(node[1], node[2], env, cplx, ctx, track)
    if tag == "root":
        n = exact(node[2]) if not has_tag(node[2], "sym") else None
        if n is None or n.denominator != 1 or n < 2:
            return _power(node[1], ("div", ("num", Fraction(1), False), node[2]), env, cplx, ctx, track)
        return _power(node[1], ("num", Fraction(1, int(n)), False), env, cplx, ctx, track)
    if tag == "fact":
        x = numeric(node[1], env, cplx, ctx, track)
        if abs(x) > 10**5:
            raise TooLarge("factorial")
        return ctx.factorial(x)
    if tag == "binom":
        return ctx.binomial(numeric(node[1], env, cplx, ctx, track), numeric(node[2], env, cplx, ctx, track))
    if tag == "log":
        x = numeric(node[1], env, cplx, ctx, track)
        if x == 0 or (not cplx and (ctx.im(x) != 0 or x < 0)):
            raise Undefined("log domain")
        out = ctx.log(x)
        if node[2] is not None:
            b = numeric(node[2], env, cplx, ctx, track)
            if b == 0 or b == 1 or (not cplx and b < 0):
                raise Undefined("log base")
            out = out / ctx.log(b)
        return out
    if tag == "call":  # an unknown function: a fixed, name-dependent smooth function of its argument
        x = numeric(node[2], env, cplx, ctx, track)
        seed = zlib.crc32(node[1].encode()) % 997
        return 1 + ctx.mpf(seed) / 331 + ctx.sin(ctx.mpf(13) / 10 * x + ctx.mpf(seed) / 97)
    if tag == "func":
        x = numeric(node[2], env, cplx, ctx, track)
        if node[1] not in ("abs", "floor", "ceil") and x != 0 and ctx.isfinite(x):
            _loss(track, ctx.mag(x))  # sin(10^100) needs ~330 more bits
        return _func(node[1], x, cplx, ctx)
    raise Undefined(f"no numeric value for {tag}")


def _guard(x, ctx):
    if ctx.isinf(x) or ctx.isnan(x):
        return x
    if x != 0 and abs(ctx.mag(x)) > MAX_MAG_BITS:
        raise TooLarge("magnitude")
    return x


def _power(base_node, exp_node, env, cplx, ctx, track=None):
    base = numeric(base_node, env, cplx, ctx, track)
    exp_exact = None
    if not has_tag(exp_node, "sym", "const"):
        try:
            exp_exact = exact(exp_node)
        except NotExact:
            pass
    exp = numeric(exp_node, env, cplx, ctx, track) if exp_exact is None else None
    if base == 0:
        e = exp_exact if exp_exact is not None else exp
        if ctx.re(e) < 0:
            raise Undefined("0 to a negative power")
        return ctx.mpf(0) if e != 0 else ctx.mpf(1)
    size = abs(ctx.mag(base)) + 2
    e_val = exp if exp is not None else ctx.mpf(exp_exact.numerator) / exp_exact.denominator
    if abs(e_val) * size > MAX_MAG_BITS:
        raise TooLarge("power")
    if exp_exact is not None and exp_exact.denominator == 1:
        return _guard(ctx.power(base, int(exp_exact)), ctx)
    if not cplx:
        if ctx.im(base) != 0:
            raise Undefined("complex base")
        if base < 0:
            if exp_exact is not None and exp_exact.denominator % 2 == 1:  # real odd root
                return -_guard(ctx.power(-base, e_val), ctx)
            raise Undefined("negative base")
    return _guard(ctx.power(base, e_val), ctx)


def _func(name, x, cplx, ctx):
    if name == "abs":
        return abs(x)
    if name in ("floor", "ceil"):
        if ctx.im(x) != 0:
            raise Undefined("floor of complex")
        return ctx.floor(x) if name == "floor" else ctx.ceil(x)
    if name == "exp":
        if abs(ctx.re(x)) > MAX_MAG_BITS:
            raise TooLarge("exp")
        return ctx.exp(x)
    if name in ("arcsin", "arccos") and not cplx and (ctx.im(x) != 0 or abs(x) > 1):
        raise Undefined("arcsin domain")
    table = {
        "sin": ctx.sin, "cos": ctx.cos, "tan": ctx.tan, "arcsin": ctx.asin, "arccos": ctx.acos,
        "arctan": ctx.atan, "sinh": ctx.sinh, "cosh": ctx.cosh, "tanh": ctx.tanh,
    }
    if name in table:
        if name in ("sinh", "cosh") and abs(ctx.re(x)) > MAX_MAG_BITS:
            raise TooLarge("hyperbolic")
        return table[name](x)
    inv = {"sec": ctx.cos, "csc": ctx.sin, "cot": ctx.tan}
    if name in inv:
        d = inv[name](x)
        if d == 0:
            raise Undefined("pole")
        return 1 / d
    raise Undefined(f"unknown function {name}")


_CONTEXTS: dict = {}


def context(prec_bits: int, dps: int | None = None):
    """A cached mpmath context with at least ``prec_bits`` of precision (rounded up), or ``dps`` digits."""
    import mpmath

    key = ("dps", dps) if dps else -(-prec_bits // 256) * 256
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = mpmath.MPContext()
        if dps:
            ctx.dps = dps
        else:
            ctx.prec = key
        if len(_CONTEXTS) < 64:
            _CONTEXTS[key] = ctx
    return ctx


def close(a, b, rel_tol: float) -> bool:
    """Relative closeness of two mpmath numbers (complex allowed)."""
    if a == b:
        return True
    scale = max(abs(a), abs(b))
    return abs(a - b) <= rel_tol * scale


def sample_points(symbols, wide: bool = False):
    """Deterministic pseudo-random points: first all-positive, then mixed signs.

    ``wide`` (for floor/ceil and unknown functions, which look constant on a narrow range):
    more points, many of them integers, spread up to 60 (and every integer 1..40 for one symbol).
    """
    rng = random.Random(0x5EED + len(symbols))
    names = sorted(symbols)
    count = 24 if wide else 8
    points = []
    if wide and len(names) == 1:  # step functions of an integer n: check every small n too
        points = [{names[0]: Fraction(k)} for k in range(1, 41)]
    for k in range(count):
        point = {}
        for name in names:
            if wide:
                mag = Fraction(rng.randint(1, 60)) + (Fraction(1, rng.randint(3, 29)) if k % 2 else 0)
            else:
                mag = Fraction(rng.randint(500, 2500), 1000) + Fraction(1, rng.randint(7, 97))
            sign = -1 if (k >= count // 2 and rng.random() < 0.6) else 1
            point[name] = sign * mag
        points.append(point)
    return points


def needs_wide_sampling(*nodes) -> bool:
    return any(n[0] == "call" or (n[0] == "func" and n[1] in ("floor", "ceil")) for node in nodes for n in walk(node))


def point_env(point: dict, ctx=None) -> dict:
    ctx = ctx or base_ctx()
    return {k: ctx.mpf(v.numerator) / v.denominator for k, v in point.items()}

