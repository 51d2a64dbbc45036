"""Our own LaTeX/plain-math parser: cleaned answer string -> small immutable tuple AST.

Why not sympy's parser or latex2sympy: model output is untrusted, and ``parse_expr`` ends in
``eval``. This recursive-descent parser only builds tuples, so nothing in the input is ever
executed; unknown macros or characters make it give up (the answer is then compared as text).
Depth and length are capped so a hostile input costs at most linear time.

Nodes (tags first): ("num", Fraction, is_decimal), ("const", "pi"|"e"|"i"|"inf"), ("sym", name),
("add", terms), ("mul", factors), ("div", a, b), ("pow", a, b), ("neg", a), ("func", name, arg),
("log", arg, base), ("root", arg, n), ("binom", a, b), ("fact", a), ("pm", a|None, b), ("pct", a),
("seq", open, close, items), ("set", items), ("list", items), ("union", items),
("matrix", rows), ("rel", ops, operands), ("text", s), ("based", digits, base), ("reals",),
("call", name, arg) (an unknown function applied to an argument, e.g. ``f(x)``, ``I(0)``).
"""

from __future__ import annotations

from fractions import Fraction

from rewards.math.lexer import ATOM_CMDS, FUNCS, GREEK, MACROS, MATH_WORDS, MUL_OPS, REL_OPS, WORDS, ParseError, number, tokenize
from rewards.math.macros import MacroMixin

MAX_DEPTH = 150


def parse(s: str):
    """Parse a cleaned answer string into an AST; raises ParseError."""
    words = {w.lower() for w in WORDS.findall(MACROS.sub(" ", s))}
    if words and not words <= MATH_WORDS:  # prose ("Evelyn", "even"): compare as text
        return ("text", s.strip())
    p = _Parser(tokenize(s))
    node = p.top()
    if p.pos != len(p.toks):
        raise ParseError(f"unexpected {p.toks[p.pos][1]!r}")
    return node


class _Parser(MacroMixin):
    def __init__(self, toks):
        self.toks = toks
        self.pos = 0
        self.depth = 0
        self.in_abs = 0

    # ---------------------------------------------------------------- helpers
    def peek(self, k: int = 0):
        i = self.pos + k
        return self.toks[i] if i < len(self.toks) else (None, None, False)

    def take(self):
        tok = self.peek()
        if tok[0] is None:
            raise ParseError("unexpected end")
        self.pos += 1
        return tok

    def expect(self, text: str) -> None:
        if self.take()[1] != text:
            raise ParseError(f"expected {text!r}")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nested too deeply")

    # ---------------------------------------------------------------- grammar
    def top(self):
        items = self.items(stop=())
        return items[0] if len(items) == 1 else ("list", tuple(items))

    def items(self, stop) -> list:
        """Comma/semicolon separated items up to (not including) a token in ``stop``."""
        out = [self.union()]
        while self.peek()[1] in (",", ";"):
            self.take()
            out.append(self.union())
        if self.peek()[1] is not None and self.peek()[1] not in stop:
            raise ParseError(f"unexpected {self.peek()[1]!r}")
        return out

    def union(self):
        parts = [self.relation()]
        while self.peek()[1] == r"\cup":
            self.take()
            parts.append(self.relation())
        return parts[0] if len(parts) == 1 else ("union", tuple(parts))

    def relation(self):
        operands = [self.expr()]
        ops = []
        while True:
            text = self.peek()[1]
            if text in REL_OPS:
                self.take()
                ops.append(REL_OPS[text])
                operands.append(self.expr())
            elif text == r"\in":  # "x \in [1, 2]": the set is the answer
                self.take()
                return self.union()
            else:
                break
        return operands[0] if not ops else ("rel", tuple(ops), tuple(operands))

    def expr(self):
        self.enter()
        terms = []
        sign = self.peek()[1]
        if sign in ("+", "-", r"\pm", r"\mp"):
            self.take()
            first = self.term()
            node = ("pm", None, first) if sign in (r"\pm", r"\mp") else (("neg", first) if sign == "-" else first)
        else:
            node = self.term()
        terms.append(node)
        while self.peek()[1] in ("+", "-", r"\pm", r"\mp"):
            op = self.take()[1]
            rhs = self.term()
            if op in (r"\pm", r"\mp"):
                left = terms[0] if len(terms) == 1 else ("add", tuple(terms))
                terms = [("pm", left, rhs)]
            else:
                terms.append(rhs if op == "+" else ("neg", rhs))
        self.depth -= 1
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def term(self):
        factors = [self.unary()]
        while True:
            kind, text, space = self.peek()
            if text in MUL_OPS:
                self.take()
                factors.append(self.unary())
            elif text in ("/", r"\div"):
                self.take()
                den = self.unary()
                num = factors[0] if len(factors) == 1 else ("mul", tuple(factors))
                factors = [("div", num, den)]
            elif text == r"\over":
                self.take()
                num = factors[0] if len(factors) == 1 else ("mul", tuple(factors))
                factors = [("div", num, self.term())]
            elif self.starts_atom(kind, text):
                mixed = self.mixed_number(factors)
                if mixed is not None:
                    factors = [mixed]
                else:
                    factors.append(self.power())
            else:
                break
        return factors[0] if len(factors) == 1 else ("mul", tuple(factors))

    def starts_atom(self, kind, text) -> bool:
        if kind in ("num", "word"):
            return True
        if kind == "cmd":
            return text in ATOM_CMDS or text[1:] in FUNCS or text[1:] in GREEK or text == r"\operatorname"
        if text == "|":
            return self.in_abs == 0
        return text in ("(", "{")

    def mixed_number(self, factors):
        """``2\\frac{1}{2}`` and ``2 1/2`` are 5/2 (a whole number directly before a numeric fraction)."""
        if len(factors) != 1 or factors[0][0] != "num" or factors[0][2] or factors[0][1].denominator != 1:
            return None
        whole = factors[0][1]
        kind, text, space = self.peek()
        if text == r"\frac":
            save = self.pos
            frac = self.power()
            if frac[0] == "div" and frac[1][0] == "num" and frac[2][0] == "num" and self.peek()[1] != "^":
                if not frac[1][2] and not frac[2][2] and frac[2][1] != 0:
                    return ("num", whole + frac[1][1] / frac[2][1], False)
            self.pos = save
            return None
        if kind == "num" and space and self.peek(1)[1] == "/" and self.peek(2)[0] == "num":
            num, den = number(text)[1], number(self.peek(2)[1])[1]
            if den != 0 and self.peek(3)[1] not in ("^", "!") and self.peek(3)[0] not in ("num", "word"):
                self.pos += 3
                return ("num", whole + num / den, False)
        return None

    def unary(self):
        text = self.peek()[1]
        if text == "-":
            self.take()
            return ("neg", self.unary())
        if text == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        self.enter()
        base = self.postfix()
        if self.peek()[1] in ("^", "**"):
            self.take()
            if self.peek()[1] == "{":
                exp = self.group()
            elif self.peek()[1] in ("-", "+"):
                exp = self.unary()
            else:
                exp = self.power()
            base = ("pow", base, exp)
            base = self.postfix_ops(base)
        self.depth -= 1
        return base

    def postfix(self):
        return self.postfix_ops(self.atom())

    def postfix_ops(self, node):
        while True:
            text = self.peek()[1]
            if text == "!":
                self.take()
                node = ("fact", node)
            elif text in (r"\%", "%"):
                self.take()
                node = ("pct", node)
            elif text == "_" and node[0] in ("num", "sym"):
                self.take()
                sub = self.group() if self.peek()[1] == "{" else self.atom()
                node = self.subscript(node, sub)
            else:
                return node

    def subscript(self, node, sub):
        if node[0] == "num" and sub[0] == "num" and not node[2] and node[1].denominator == 1:
            return ("based", str(node[1]), int(sub[1]))
        if node[0] == "sym" and sub[0] in ("num", "sym"):
            return ("sym", f"{node[1]}_{sub[1] if sub[0] == 'sym' else sub[1]}")
        raise ParseError("unsupported subscript")

    def group(self):
        """A ``{...}`` group (``\\over`` inside it makes a fraction)."""
        self.expect("{")
        self.enter()
        if self.peek()[1] == "}":
            raise ParseError("empty group")
        items = self.items(stop=("}",))
        self.expect("}")
        self.depth -= 1
        return items[0] if len(items) == 1 else ("list", tuple(items))

    def arg(self):
        """A TeX macro argument: a group or a single token (``\\frac12``)."""
        kind, text, _ = self.peek()
        if text == "{":
            return self.group()
        if kind == "num":  # \frac12: one digit only
            self.take()
            if len(text) > 1 and text.isdigit():
                self.toks.insert(self.pos, ("num", text[1:], False))
                return ("num", Fraction(int(text[0])), False)
            return number(text)
        if kind == "word":
            self.take()
            if len(text) > 1:
                self.toks.insert(self.pos, ("word", text[1:], False))
            return self.letter(text[0])
        return self.atom()

    def atom(self):
        self.enter()
        kind, text, _ = self.take()
        if kind == "num":
            node = number(text)
        elif kind == "word":
            node = self.word(text)
        elif kind == "cmd":
            node = self.command(text)
        elif text == "(" or text == "[":
            node = self.bracket(text)
        elif text == "{":
            self.pos -= 1
            node = self.group()
        elif text == "|":
            self.in_abs += 1
            inner = self.expr()
            self.in_abs -= 1
            self.expect("|")
            node = ("func", "abs", inner)
        else:
            raise ParseError(f"unexpected {text!r}")
        self.depth -= 1
        return node

    def bracket(self, opener):
        items = self.items(stop=(")", "]"))
        closer = self.take()[1]
        if len(items) == 1 and opener + closer in ("()", "[]"):
            return items[0]
        return ("seq", opener, closer, tuple(items))

    def word(self, text):
        low = text.lower()
        if low in FUNCS or low == "sqrt":
            return self.function(low)
        if low in ("pi",):
            return ("const", "pi")
        if low in ("inf", "infty"):
            return ("const", "inf")
        if len(text) > 1:  # "xy" is x*y: push the rest back as its own word
            self.toks.insert(self.pos, ("word", text[1:], False))
            return self.letter(text[0])
        if self.is_call(text):  # f(x), I(0): function notation, not a product
            self.take()
            arg = self.expr()
            self.expect(")")
            return ("call", text, arg)
        return self.letter(text)

    def is_call(self, name) -> bool:
        """``f(x)``/``g(t)``, or any letter applied to a constant (nobody writes ``I\\cdot 0`` as ``I(0)``)."""
        kind, text, space = self.peek()
        if text != "(" or space:
            return False
        if name in "fgh":
            return True
        k = 2 if self.peek(1)[1] == "-" else 1
        return self.peek(k)[0] == "num" and self.peek(k + 1)[1] == ")"

    @staticmethod
    def letter(ch):
        if ch == "e":
            return ("const", "e")
        if ch == "i":
            return ("const", "i")
        return ("sym", ch)
