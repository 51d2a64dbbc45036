"""Tiny LaTeX brace helpers shared by answer extraction, normalisation and parsing."""

from __future__ import annotations


def match_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; None if unbalanced.

    Escaped braces (``\\{``, ``\\}``) are literal characters, not grouping.
    """
    if open_idx >= len(text) or text[open_idx] != "{":
        return None
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (also covers \{ and \})
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def read_arg(text: str, idx: int) -> tuple[str, int] | None:
    """Read one TeX macro argument at ``idx``: a ``{...}`` group or a single token.

    Returns ``(argument, index after it)`` or None. A single token is one character or
    one control sequence such as ``\\pi`` (so ``\\frac12`` and ``\\frac ab`` work).
    """
    n = len(text)
    while idx < n and text[idx] == " ":
        idx += 1
    if idx >= n:
        return None
    ch = text[idx]
    if ch == "{":
        end = match_brace(text, idx)
        if end is None:
            return None
        return text[idx + 1 : end], end + 1
    if ch == "}":
        return None
    if ch == "\\":
        j = idx + 1
        while j < n and text[j].isalpha():
            j += 1
        if j == idx + 1:  # control symbol like \, or \%
            j = min(idx + 2, n)
        return text[idx:j], j
    return ch, idx + 1


def unwrap_macro(text: str, macro: str) -> str:
    """Replace every ``\\macro{X}`` with ``X`` (brace-aware); unbalanced occurrences are kept."""
    out = []
    i = 0
    token = "\\" + macro
    while True:
        j = text.find(token, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = j + len(token)
        if k < len(text) and text[k].isalpha():  # a longer macro name, e.g. \textbf vs \text
            out.append(text[i:k])
            i = k
            continue
        while k < len(text) and text[k] == " ":
            k += 1
        end = match_brace(text, k) if k < len(text) and text[k] == "{" else None
        if end is None:
            out.append(text[i:k])
            i = k
            continue
        out.append(text[i:j])
        out.append(text[k + 1 : end])
        i = end + 1


def brace_macro_args(text: str, macro: str, nargs: int) -> str:
    """Rewrite ``\\macro`` arguments into braced form: ``\\frac12`` -> ``\\frac{1}{2}``.

    Makes equivalent spellings compare equal as strings. Left unchanged if malformed.
    """
    token = "\\" + macro
    out = []
    i = 0
    while True:
        j = text.find(token, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = j + len(token)
        if k < len(text) and (text[k].isalpha() or text[k] == "["):  # longer name, or \sqrt[n]
            out.append(text[i:k])
            i = k
            continue
        args = []
        for _ in range(nargs):
            got = read_arg(text, k)
            if got is None:
                break
            args.append(brace_macro_args(got[0], macro, nargs))
            k = got[1]
        if len(args) < nargs:
            out.append(text[i:k])
            i = k
            continue
        out.append(text[i:j] + token + "".join("{" + a + "}" for a in args))
        i = k
