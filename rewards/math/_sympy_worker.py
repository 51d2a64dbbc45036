"""Child side of ``SympyPool``: builds sympy objects from our tuple ASTs and runs the checks
the in-process comparer could not decide. Framed pickles over stdin/stdout.

Ops: ("equal", (pred_node, gold_node, policy)) -> bool; ("sleep", seconds) -> True (tests use
it to exercise the timeout path). Replies are ("ok", value), ("error", message) for a failed
request, or ("sympy_error", message) when sympy raised on a check that decided the answer (the
verifier records it as the reason ``sympy_error``; it is not a "not equal").
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import threading
import time

_HEADER = struct.Struct("<I")


def to_sympy(node):
    """Our AST -> sympy expression (no string parsing anywhere)."""
    import sympy as sp

    tag = node[0]
    if tag == "num":
        return sp.Rational(node[1].numerator, node[1].denominator)
    if tag == "const":
        return {"pi": sp.pi, "e": sp.E, "i": sp.I, "inf": sp.oo}[node[1]]
    if tag == "sym":
        return sp.Symbol(node[1])
    if tag == "neg":
        return -to_sympy(node[1])
    if tag == "add":
        return sp.Add(*[to_sympy(t) for t in node[1]])
    if tag == "mul":
        return sp.Mul(*[to_sympy(f) for f in node[1]])
    if tag == "div":
        return to_sympy(node[1]) / to_sympy(node[2])
    if tag == "pow":
        return sp.Pow(to_sympy(node[1]), to_sympy(node[2]))
    if tag == "root":
        return sp.root(to_sympy(node[1]), to_sympy(node[2]))
    if tag == "fact":
        return sp.factorial(to_sympy(node[1]))
    if tag == "binom":
        return sp.binomial(to_sympy(node[1]), to_sympy(node[2]))
    if tag == "log":
        arg = to_sympy(node[1])
        return sp.log(arg) if node[2] is None else sp.log(arg, to_sympy(node[2]))
    if tag == "call":
        return sp.Function(node[1])(to_sympy(node[2]))
    if tag == "func":
        fn = {
            "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "sec": sp.sec, "csc": sp.csc, "cot": sp.cot,
            "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan, "sinh": sp.sinh, "cosh": sp.cosh,
            "tanh": sp.tanh, "exp": sp.exp, "abs": sp.Abs, "floor": sp.floor, "ceil": sp.ceiling,
        }[node[1]]
        return fn(to_sympy(node[2]))
    raise ValueError(f"no sympy form for {tag}")


_MAX_MESSAGE = 300


class SympyFailed(Exception):
    """sympy raised on a check the answer depends on; the message names the exception."""


def _fallback(kind, *args):
    """Decide what the in-process comparer could not (scalar identity, relations, solution sets).

    Exceptions propagate: ``_recording`` turns them into "undecided" and remembers them."""
    import sympy as sp

    if kind == "scalar":
        a, b = to_sympy(args[0]), to_sympy(args[1])
        diff = sp.simplify(a - b)
        if diff == 0:
            return True
        eq = a.equals(b)
        return bool(eq) if eq is not None else False
    if kind == "rel":
        f, g, op = to_sympy(args[0]), to_sympy(args[1]), args[2]
        ratio = sp.simplify(f / g)
        if ratio.free_symbols or ratio == 0:
            return False
        return bool(ratio > 0) if op in (">", ">=") else True
    if kind == "eqset":
        f, g, var = to_sympy(args[0]), to_sympy(args[1]), sp.Symbol(args[2])
        return sp.solveset(f, var, sp.S.Reals) == sp.solveset(g, var, sp.S.Reals)
    return False


def _recording(errors: list):
    """``_fallback`` whose exceptions become None (undecided) and are appended to ``errors``."""

    def fallback(kind, *args):
        try:
            return _fallback(kind, *args)
        except Exception as exc:  # RecursionError, TypeError from sympy's relationals, ...
            errors.append(f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE])
            return None

    return fallback


def _handle(op, payload):
    if op == "sleep":
        time.sleep(float(payload))
        return True
    if op == "equal":
        from rewards.math.compare import Comparer

        pred, gold, policy = payload
        errors: list[str] = []
        result = Comparer(policy, fallback=_recording(errors)).equal(pred, gold)
        if result is None and errors:  # the verdict hinged on a check sympy could not run
            raise SympyFailed(errors[0])
        return bool(result)
    raise ValueError(f"unknown op {op!r}")


def _read_exact(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


def main() -> None:
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    import sympy  # noqa: F401  (pay the import before reporting ready)

    import rewards.math.compare  # noqa: F401

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    _send(stdout, ("ready",))
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exact(stdin, _HEADER.size))
            op, payload = pickle.loads(_read_exact(stdin, size))
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", _handle(op, payload))
        except SympyFailed as exc:
            reply = ("sympy_error", str(exc))
        except Exception as exc:
            reply = ("error", f"{type(exc).__name__}: {exc}")
        _send(stdout, reply)


if __name__ == "__main__":
    main()
