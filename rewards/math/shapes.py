"""Shape helpers for the comparer: plus-minus expansion, assignments, relations in normal form,
inequalities as intervals, vectors. Pure functions on the tuple AST, no numerics."""

from __future__ import annotations

from rewards.math import evaluate as ev

COLLECTIONS = frozenset(("list", "set", "seq", "union", "matrix", "reals", "rel", "text", "based"))
INF = ("const", "inf")
NEG_INF = ("neg", INF)
FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "!=": "!="}


def expand_pm(node):
    """``a \\pm b`` -> the set {a+b, a-b}; leaves other nodes alone."""
    if node[0] in ("list", "set"):
        items = []
        for it in node[1]:
            e = expand_pm(it)
            items.extend(e[1] if e[0] == "set" and it[0] != "set" else (e,))
        return (node[0], tuple(items))
    if node[0] in COLLECTIONS or not ev.has_tag(node, "pm"):
        return node
    alts = pm_alternatives(node)
    return ("set", tuple(alts)) if len(alts) > 1 else alts[0]


def pm_alternatives(node, limit: int = 16):
    if not isinstance(node, tuple) or not node or node[0] not in ev.NODE_TAGS:
        return [node]
    if node[0] == "pm":
        a = pm_alternatives(node[1]) if node[1] is not None else [None]
        b = pm_alternatives(node[2])
        out = []
        for x in a:
            for y in b:
                out.append(y if x is None else ("add", (x, y)))
                out.append(("neg", y) if x is None else ("add", (x, ("neg", y))))
        return out[:limit]
    if not ev.has_tag(node, "pm"):
        return [node]
    results = [()]
    for child in node[1:]:
        if isinstance(child, tuple) and child and isinstance(child[0], tuple):  # tuple of nodes
            options = [tuple(c) for c in _product([pm_alternatives(c) for c in child])]
        else:
            options = pm_alternatives(child) if isinstance(child, tuple) else [child]
        results = [r + (o,) for r in results for o in options][:limit]
    return [(node[0],) + r for r in results]


def _product(lists):
    out = [[]]
    for options in lists:
        out = [o + [x] for o in out for x in options][:16]
    return out


def assigned_value(rel, keep_symbol: bool = False):
    """``x = 5`` -> 5 (or (x, 5)); also definitions ``f(x) = 2x``. None unless a single '=' with a
    lone symbol or function call on one side that does not occur on the other."""
    if rel[0] != "rel" or rel[1] != ("=",):
        return None
    a, b = rel[2]
    for s, v in ((a, b), (b, a)):
        if (s[0] == "sym" and s[1] not in ev.free_symbols(v)) or (s[0] == "call" and s not in ev.walk(v)):
            return (s, v) if keep_symbol else v
    return None


def normal_form(rel):
    """``a op b`` -> (f, op) with op in {=, !=, >, >=} meaning ``f op 0``."""
    op = rel[1][0]
    a, b = rel[2]
    if op in ("<", "<="):
        return ("add", (b, ("neg", a))), FLIP[op]
    return ("add", (a, ("neg", b))), op


def is_inequality(node) -> bool:
    if node[0] == "rel":
        return node[1][0] != "="
    return node[0] == "list" and all(n[0] == "rel" and n[1][0] != "=" for n in node[1])


def as_intervals(node):
    """Inequalities in one variable -> interval (seq) or union; None if not of that shape."""
    if node[0] == "list":
        parts = [as_intervals(n) for n in node[1]]
        if any(p is None for p in parts):
            return None
        flat = []
        for p in parts:
            flat.extend(p[1] if p[0] == "union" else (p,))
        return ("union", tuple(flat))
    ops, args = node[1], node[2]
    syms = set().union(*(ev.free_symbols(a) for a in args))
    if len(syms) != 1:
        return None
    var = ("sym", next(iter(syms)))
    if len(ops) == 1:
        a, b = args
        op = ops[0]
        if b == var and a != var:
            a, b, op = b, a, FLIP[op]
        if a != var or var in ev.walk(b):
            return None
        if op == "!=":
            return ("union", (("seq", "(", ")", (NEG_INF, b)), ("seq", "(", ")", (b, INF))))
        if op in (">", ">="):
            return ("seq", "(" if op == ">" else "[", ")", (b, INF))
        if op in ("<", "<="):
            return ("seq", "(", ")" if op == "<" else "]", (NEG_INF, b))
        return None
    if len(ops) == 2 and args[1] == var and var not in ev.walk(args[0]) and var not in ev.walk(args[2]):
        lo, hi, (o1, o2) = args[0], args[2], ops
        if o1 in (">", ">=") and o2 in (">", ">="):
            lo, hi, o1, o2 = hi, lo, FLIP[o2], FLIP[o1]
        if o1 in ("<", "<=") and o2 in ("<", "<="):
            return ("seq", "(" if o1 == "<" else "[", ")" if o2 == "<" else "]", (lo, hi))
    return None


def as_vector(node):
    if node[0] == "matrix":
        rows = node[1]
        if len(rows) == 1:
            return rows[0]
        if all(len(r) == 1 for r in rows):
            return tuple(r[0] for r in rows)
        return None
    if node[0] == "seq" and node[1:3] == ("(", ")"):
        return node[3]
    if node[0] == "list":
        return node[1]
    return None


def inf_sign(node) -> int:
    if node == INF or node == ("add", (INF,)):
        return 1
    if node == NEG_INF:
        return -1
    return 0


def digits(node):
    if node[0] == "based":
        return node[1].lower()
    if node[0] == "num" and node[1].denominator == 1 and node[1] >= 0 and not node[2]:
        return str(node[1])
    return None
