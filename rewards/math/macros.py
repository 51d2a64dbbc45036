"""LaTeX macro handling for the parser: ``\\frac``, ``\\sqrt[n]``, ``\\binom``, functions with
powers and bases (``\\sin^2 x``, ``\\log_2 8``, ``\\cos^{-1}``), sets, floors, ``\\mathbb{R}`` and
matrix environments. Any macro not listed here is a ParseError: unknown input is never guessed at.
"""

from __future__ import annotations

from fractions import Fraction

from rewards.math.lexer import FUNCS, GREEK, INVERSE, MATRIX_ENVS, ParseError

_PAIRS = {r"\lfloor": (r"\rfloor", "floor"), r"\lceil": (r"\rceil", "ceil"), r"\lvert": (r"\rvert", "abs")}


class MacroMixin:
    """Methods of ``parser._Parser`` that read one macro and its arguments."""

    def command(self, text):
        name = text[1:]
        if text == r"\frac":
            return ("div", self.arg(), self.arg())
        if text == r"\sqrt":
            n = ("num", Fraction(2), False)
            if self.peek()[1] == "[":
                self.take()
                n = self.expr()
                self.expect("]")
            return ("root", self.arg(), n)
        if text == r"\binom":
            return ("binom", self.arg(), self.arg())
        if text == r"\pi":
            return ("const", "pi")
        if text == r"\infty":
            return ("const", "inf")
        if name in GREEK:
            return ("sym", name)
        if name in FUNCS:
            return self.function(name)
        if text == r"\operatorname":
            inner = self.group()
            raise ParseError(f"unknown operator {inner!r}")
        if text in (r"\{", r"\lbrace"):
            if self.peek()[1] in (r"\}", r"\rbrace"):
                self.take()
                return ("set", ())
            items = self.items(stop=(r"\}", r"\rbrace"))
            self.take()
            return ("set", tuple(items))
        if text in (r"\emptyset", r"\varnothing"):
            return ("set", ())
        if text == r"\mathbb":
            inner = self.group()
            if inner == ("sym", "R"):
                return ("reals",)
            raise ParseError("unsupported \\mathbb")
        if text in _PAIRS:
            close, fname = _PAIRS[text]
            inner = self.expr()
            self.expect(close)
            return ("func", fname, inner)
        if text == r"\begin":
            return self.matrix()
        raise ParseError(f"unsupported macro {text}")

    def function(self, name):
        power = None
        if self.peek()[1] == "^":  # \sin^2 x
            self.take()
            power = self.group() if self.peek()[1] == "{" else self.atom()
        base = None
        if name == "log" and self.peek()[1] == "_":
            self.take()
            base = self.group() if self.peek()[1] == "{" else self.atom()
        if name == "sqrt":
            node = ("root", self.power(), ("num", Fraction(2), False))
        else:
            arg = self.power()
            if name in ("ln", "log", "lg"):
                if name == "lg":
                    base = ("num", Fraction(10), False)
                node = ("log", arg, base)
            else:
                node = ("func", name, arg)
        if power == ("neg", ("num", Fraction(1), False)) and name in INVERSE:  # \cos^{-1} x = arccos x
            return ("func", INVERSE[name], node[2])
        return node if power is None else ("pow", node, power)

    def matrix(self):
        env = self.group_name()
        if env not in MATRIX_ENVS:
            raise ParseError(f"unsupported environment {env}")
        if env == "array" and self.peek()[1] == "{":  # column spec
            depth = 0
            while True:
                t = self.take()[1]
                depth += (t == "{") - (t == "}")
                if depth == 0:
                    break
        rows, row = [], []
        while True:
            if self.peek()[1] == r"\end":
                self.take()
                if self.group_name() != env:
                    raise ParseError("mismatched \\end")
                break
            row.append(self.expr())
            sep = self.peek()[1]
            if sep == r"\end":
                continue
            self.take()
            if sep == "&":
                continue
            if sep != r"\\":
                raise ParseError("bad matrix")
            rows.append(tuple(row))
            row = []
        if row:
            rows.append(tuple(row))
        if not rows or len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        return ("matrix", tuple(rows))

    def group_name(self) -> str:
        self.expect("{")
        parts = []
        while self.peek()[1] != "}":
            parts.append(self.take()[1])
        self.take()
        return "".join(parts).rstrip("*")
