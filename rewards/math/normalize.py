"""String clean-up of an extracted answer before parsing: formatting that never changes its value.

Removes math delimiters, spacing macros, ``\\left``/``\\right``, degree marks, currency and unit
words, thousands separators, and records whether a percent sign was present (the comparison
policy decides what a percent means; see ``rewards.math.verifier``). Pure string work, no
parsing, so it is cheap and bounded (linear in the input, which callers cap in length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.latex import match_brace

_UNICODE = str.maketrans(
    {
        "\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ",
        "\u00f7": "\\div ", "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u03c0": "\\pi ",
        "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u00b0": "^\\circ", "\u00a0": " ", "\u2009": " ",
        "\u202f": " ", "\u00b1": "\\pm ", "\u222a": "\\cup ", "\u2208": "\\in ",
    }
)
_TEXT_MACROS = ("text", "textrm", "textnormal", "mbox", "mathrm", "textbf", "mathbf", "textit",
                "mathit", "boldsymbol", "bm", "mathsf", "texttt", "emph", "operatorname", "hbox")
_TEXT_CMD = re.compile(r"\\(" + "|".join(_TEXT_MACROS) + r")(?![A-Za-z])\s*")
_DROP = re.compile(
    r"\\(?:displaystyle|textstyle|scriptstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big|biggl|biggr|"
    r"bigg|Bigg|quad|qquad|limits|nolimits|mathclap)(?![A-Za-z])|(?<!\\)\\[,;:! ]|~"
)
_DFRAC = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_BINOM = re.compile(r"\\[dt]binom(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|(?<=\d)\s*degrees?\b|\s+deg\b")
_PERCENT = re.compile(r"\\%|%|\s*\bpercent\b")
_THOUSANDS_TEX = re.compile(r"(?<=\d)(?:\{,\}|,\\!\s*)(?=\d{3}(?!\d))")
_NUMBER_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CURRENCY_PREFIX = re.compile(r"^(?:\\\$|\$|USD|US\$|Rs\.?|€|£|¥|\\euro)\s*")
_CURRENCY_INNER = re.compile(r"(?:\\\$|\$|€|£|¥)\s*(?=\d)")
_UNITS = frozenset(
    "cm mm km m kg g mg ft in yd mi oz lb lbs hr hrs h s sec min ml l mph kph sq km/h m/s cm/s".split()
)
# Unit/noun words after a value: "5 cm", "18 dollars", "3 square feet", "864 inches^2".
_TRAILING_WORDS = re.compile(
    r"(?:[\d}\)\]]|\\pi)(\s*)([A-Za-z]+(?:/[A-Za-z]+)?\.?(?:\s+[A-Za-z]+(?:/[A-Za-z]+)?\.?)*)(?:\s*\^\s*\{?[23]\}?)?\s*$"
)
_MATH_WORDS = frozenset(
    "sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh log ln exp sqrt pi infty inf "
    "and or lg arcsec arccsc arccot".split()
)
_UNIT_TEXT = re.compile(r"\s*[A-Za-z][A-Za-z .\-/]*\s*")
_CONJUNCTION = re.compile(r"\s*(?:\\text\{\s*(?:or|and)\s*\}|\b(?:or|and)\b)\s*")
_REPEATING = re.compile(r"(\d*)\.(\d*)\\(?:overline|dot)\s*\{?(\d+)\}?")
_DELIMS = re.compile(r"(?<!\\)(?:\\\(|\\\)|\\\[|\\\])")


@dataclass(frozen=True)
class Cleaned:
    """A cleaned answer string plus the markers stripped from it that the comparison may need."""

    text: str
    percent: bool = False


def clean(answer: str) -> Cleaned:
    """Strip value-neutral formatting; see the module docstring for what is removed."""
    s = answer.strip().translate(_UNICODE)
    s = s.replace("\\$", "\x00")  # escaped dollar is currency, bare $ are math delimiters
    s = s.replace("$", "").replace("\x00", "\\$")
    s = _DELIMS.sub(" ", s)
    s = _THOUSANDS_TEX.sub("", s)
    if "\\overline" in s or "\\dot" in s:
        s = _REPEATING.sub(_repeating_to_frac, s)
    s = _DROP.sub(" ", s)
    s = _DFRAC.sub(r"\\frac", s)
    s = _BINOM.sub(r"\\binom", s)
    s = _CONJUNCTION.sub(", ", s) if ("or" in s or "and" in s) else s
    s = _unwrap_text(s)
    s = _DEGREES.sub("", s)  # 90^\circ is 90: degrees are not converted to radians
    percent = bool(_PERCENT.search(s))
    if percent:
        s = _PERCENT.sub("", s)
    s = _strip_currency_and_units(s.strip())
    s = s.strip().rstrip(".").strip()
    s = _strip_outer_braces(s)
    if _NUMBER_THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return Cleaned(s, percent)


def canonical_text(s: str) -> str:
    """Loose form for comparing word answers: no spaces/braces/backslashes, lower case."""
    s = re.sub(r"[\s{}\\]", "", s).lower()
    while len(s) > 2 and s[0] == "(" and s[-1] == ")" and _balanced(s[1:-1]):
        s = s[1:-1]
    m = re.fullmatch(r"\(?([a-e])\)?", s)  # multiple choice "(C)" / "C"
    return m.group(1) if m else s.rstrip(".")


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def _unwrap_text(s: str) -> str:
    """``\\text{..}``-like groups: conjunctions become commas, trailing unit text is dropped."""
    out: list[str] = []
    i = 0
    while True:
        m = _TEXT_CMD.search(s, i)
        if m is None:
            out.append(s[i:])
            break
        start = m.end()
        end = match_brace(s, start) if start < len(s) and s[start] == "{" else None
        if end is None:  # not a group: drop the macro name only
            out.append(s[i : m.start()])
            i = m.end()
            continue
        inner = s[start + 1 : end]
        before = "".join(out) + s[i : m.start()]
        whole = not before.strip() and not s[end + 1 :].strip()
        word = inner.strip()
        is_unit = (  # "5\\text{ cm}": a word after a value; "\\mathrm{e}" (one letter, no space) is math
            not whole
            and before.strip()
            and _UNIT_TEXT.fullmatch(inner)
            and word.lower() not in _MATH_WORDS
            and (len(word) >= 2 or inner.startswith(" "))
        )
        out.append(s[i : m.start()])
        if is_unit:
            rest = re.match(r"\s*\^\s*\{?[23]\}?", s[end + 1 :])  # "\text{ cm}^2"
            i = end + 1 + (rest.end() if rest else 0)
        else:
            out.append(" " + inner + " " if not whole else inner)
            i = end + 1
    return "".join(out)


def _repeating_to_frac(m: re.Match) -> str:
    """``0.1\\overline{6}`` -> ``\\frac{1}{6}`` (exact value of a repeating decimal)."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    num = int(fixed + rep) - int(fixed or "0")
    den = (10 ** len(rep) - 1) * 10 ** len(fixed)
    return f"\\frac{{{int(whole) * den + num}}}{{{den}}}"


def _strip_currency_and_units(s: str) -> str:
    s = _CURRENCY_PREFIX.sub("", s)
    s = _CURRENCY_INNER.sub("", s)
    if s.startswith("-\\$") or s.startswith("-$"):
        s = "-" + s[3 if s[1] == "\\" else 2 :]
    m = _TRAILING_WORDS.search(s)
    if m and s[: m.start(2)].strip():
        words = [w.lower() for w in re.findall(r"[A-Za-z]+(?:/[A-Za-z]+)?", m.group(2))]
        unit_like = all(w in _UNITS or (len(w) >= 3 and w not in _MATH_WORDS) for w in words)
        if any(len(w) == 1 for w in words) and not s[m.start()].isdigit():
            unit_like = False  # "\\frac{37}{4} m" may be a product; "5 m" is five metres
        if unit_like and (m.group(1) or (len(words[0]) >= 2 and words[0] in _UNITS)):
            s = s[: m.start(1)]
    return s.strip()


def _strip_outer_braces(s: str) -> str:
    while s.startswith("{") and match_brace(s, 0) == len(s) - 1:
        s = s[1:-1].strip()
    return s
