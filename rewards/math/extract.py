"""Final-answer extraction from a model response, with named per-dataset strategies.

A strategy is an ordered list of extractors; the first one that finds something wins. All of
them look only at the text after the last ``</think>``: reasoning is not the answer. A response
that opens ``<think>`` but never closes it has no answer (the generation was cut off).

Built-in strategies (``STRATEGIES``; add more with ``register_strategy``):
  boxed        last ``\\boxed{}``/``\\fbox{}`` only (the RL default: rewards the format we ask for)
  gsm8k        ``#### N``, then boxed, then an ``Answer:`` line, then the last number
  answer_line  ``Answer: ...`` / ``The final answer is ...`` lines only
  bold         last markdown ``**...**`` span
  last_number  the last number in the text
  auto         boxed, ``####``, answer line, bold, then a short bare response (``42``)
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from rewards.latex import match_brace

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_SPACE_FORM = re.compile(r"[^\s$]+")
_THINK_CLOSE = "</think>"
_HASH = re.compile(r"####\s*([^\n]+)")
_ANSWER_START = re.compile(
    r"^\s*(?:[#>*_\s]*)(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*(?:\*\*|__)?\s*[:=]?\s*(?:\*\*|__)?\s*(.*)$",
    re.IGNORECASE,
)
_ANSWER_INLINE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*:?\s*(.+)$", re.IGNORECASE)
_BOLD = re.compile(r"\*\*([^*\n]{1,80})\*\*")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")
_MATH_SPAN = re.compile(
    r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]"
)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])")
_MAX_BARE = 80

# Sentinel: the last box exists but is unbalanced (truncated); stop instead of falling back.
STOP = object()


def after_think(text: str) -> Optional[str]:
    """Text after the last ``</think>``; None if a ``<think>`` block was never closed."""
    idx = text.rfind(_THINK_CLOSE)
    if idx >= 0:
        return text[idx + len(_THINK_CLOSE) :]
    if "<think>" in text:
        return None
    return text


def boxed(text: str):
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` (nested braces) or ``\\boxed 5``.

    An unbalanced last box (a truncated generation) returns STOP: an unfinished final
    answer must not be rescued by an earlier box or another extractor.
    """
    for match in reversed(list(_BOX.finditer(text))):
        i = match.end()
        j = i
        while j < len(text) and text[j].isspace():
            j += 1
        if j < len(text) and text[j] == "{":
            end = match_brace(text, j)
            return STOP if end is None else text[j + 1 : end].strip()
        if j > i:
            token = _SPACE_FORM.match(text, j)
            if token is not None:
                return token.group(0)
    return None


def gsm8k_hash(text: str):
    """Text after the last ``####`` marker (GSM8K's reference format)."""
    found = _HASH.findall(text)
    return _tidy(found[-1]) if found else None


def answer_line(text: str):
    """The last ``Answer: X`` / ``The final answer is X`` line (a box inside it wins)."""
    lines = text.splitlines()
    for k in range(len(lines) - 1, -1, -1):
        line = lines[k]
        if "answer" not in line.lower():
            continue
        m = _ANSWER_START.match(line) or _ANSWER_INLINE.search(line)
        if m is None:
            continue
        content = m.group(1).strip()
        if not _tidy(content):  # "**Final Answer**" with the answer on the next line
            nxt = next((ln for ln in lines[k + 1 :] if ln.strip()), "")
            content = nxt
        box = boxed(content)
        if box is not None and box is not STOP:
            return box
        math = _MATH_SPAN.search(content)
        if math:  # "The final answer is $\\frac34$. I hope it is correct."
            content = next(g for g in math.groups() if g is not None)
        else:
            content = _SENTENCE_END.split(content, maxsplit=1)[0]
        content = _tidy(content)
        if content:
            return content
    return None


def bold(text: str):
    """The last ``**X**`` span that is not itself a label like ``**Answer:**``."""
    for content in reversed(_BOLD.findall(text)):
        content = content.strip()
        if content and not content.endswith(":") and "answer" not in content.lower():
            return _tidy(content)
    return None


def bare(text: str):
    """A short one-line response is itself the answer (``42``, ``$x = 5$``)."""
    s = text.strip()
    if s and "\n" not in s and len(s) <= _MAX_BARE:
        return _tidy(s)
    return None


def last_number(text: str):
    """The last number in the text (GSM8K-style fallback)."""
    found = _NUMBER.findall(text)
    return found[-1].replace("$", "").replace(" ", "") if found else None


EXTRACTORS: dict[str, Callable[[str], object]] = {
    "boxed": boxed,
    "hash": gsm8k_hash,
    "answer_line": answer_line,
    "bold": bold,
    "bare": bare,
    "last_number": last_number,
}
STRATEGIES: dict[str, tuple[str, ...]] = {
    "boxed": ("boxed",),
    "gsm8k": ("hash", "boxed", "answer_line", "last_number"),
    "answer_line": ("answer_line",),
    "bold": ("bold",),
    "last_number": ("last_number",),
    "auto": ("boxed", "hash", "answer_line", "bold", "bare"),
}


def register_strategy(name: str, steps: tuple[str, ...]) -> None:
    """Add a named strategy made of known extractor names (e.g. for a new dataset)."""
    unknown = [s for s in steps if s not in EXTRACTORS]
    if unknown or not steps:
        raise ValueError(f"unknown extractors {unknown}; known: {sorted(EXTRACTORS)}")
    STRATEGIES[name] = tuple(steps)


def extract_answer_with_method(text: str, strategy: str = "auto") -> tuple[Optional[str], Optional[str]]:
    """(answer, extractor name) or (None, None)."""
    try:
        steps = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown extraction strategy {strategy!r}; known: {sorted(STRATEGIES)}") from None
    if not isinstance(text, str):
        return None, None
    body = after_think(text)
    if body is None:
        return None, None
    for step in steps:
        found = EXTRACTORS[step](body)
        if found is STOP:
            return None, None
        if found is not None:
            return found, step
    return None, None


def extract_answer(text: str, strategy: str = "auto") -> Optional[str]:
    """The final answer in ``text`` by the named strategy (see module docstring), or None."""
    return extract_answer_with_method(text, strategy)[0]


def extract_gold(gold: str) -> str:
    """Reference answers may be full solutions: use their box or ``####`` part if present."""
    if not isinstance(gold, str):
        return "" if gold is None else str(gold)
    if _BOX.search(gold):
        found = boxed(gold)
        if isinstance(found, str):
            return found
    if "####" in gold:
        found = gsm8k_hash(gold)
        if found:
            return found
    return gold


def _tidy(s: str) -> str:
    """Strip markdown emphasis, math delimiters and a trailing full stop around an answer."""
    s = s.strip().strip("*_").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    return s.rstrip(".").strip()
