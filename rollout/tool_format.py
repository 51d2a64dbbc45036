"""Text-side helpers of the tool rollout: find the code block, render the interpreter output,
and map character positions in decoded text back to token prefixes.

Generated token ids are never re-encoded; these helpers only *decode* them to decide where a
round ends (a token prefix is kept) and what code to run.
"""
from __future__ import annotations

import re

# Opening fence "```python" / "```py" at a line start, closing fence "```" at a line start.
# The closing fence must begin a line, so "```" inside a string literal of the code does not
# end the block early.
CODE_BLOCK_RE = re.compile(r"^```(?:python|py)[^\S\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def last_code_block(text: str) -> str | None:
    """The code of the last closed python block in ``text`` (None when there is none)."""
    blocks = CODE_BLOCK_RE.findall(text)
    return blocks[-1] if blocks else None


def find_first(text: str, needles) -> tuple[int, int] | None:
    """(start, end) of the earliest occurrence of any non-empty needle."""
    best = None
    for s in needles:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(s))
    return best


def _decoded_len(tokenizer, ids: list[int], k: int) -> int:
    return len(tokenizer.decode(ids[:k], skip_special_tokens=False)) if k else 0


def tokens_covering(tokenizer, ids: list[int], char_end: int) -> int:
    """Smallest k such that decode(ids[:k]) has at least ``char_end`` characters.

    Binary search: the decode of a prefix is a prefix of the decode (up to a partial UTF-8
    character at the end, which only makes the search conservative by a token)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if _decoded_len(tokenizer, ids, mid) >= char_end:
            hi = mid
        else:
            lo = mid + 1
    return lo


def cut_after_stop(tokenizer, ids: list[int], stops) -> tuple[int, bool]:
    """Token count up to and including the token that completes the first stop string.

    Returns (len(ids), False) when no stop string occurs. vLLM already stops there (its
    token ids may run a few characters past the stop string when a token straddles it); the
    HF engine ignores stop strings, so this gives both engines the same behaviour."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    hit = find_first(text, stops)
    if hit is None:
        return len(ids), False
    k = tokens_covering(tokenizer, ids, hit[1])
    while k < len(ids) and find_first(tokenizer.decode(ids[:k], skip_special_tokens=False), stops) is None:
        k += 1
    return k, True


def cut_before(tokenizer, ids: list[int], marker: str) -> int | None:
    """Largest token prefix whose decode ends before the first ``marker`` (None: no marker)."""
    if not marker:
        return None
    text = tokenizer.decode(ids, skip_special_tokens=False)
    pos = text.find(marker)
    if pos < 0:
        return None
    k = max(0, tokens_covering(tokenizer, ids, pos + 1) - 1)
    while k > 0 and marker in tokenizer.decode(ids[:k], skip_special_tokens=False):
        k -= 1
    return k


def cap(text: str, max_chars: int, keep_tail: bool = False) -> str:
    """At most about ``max_chars`` characters, with a marker saying how many were dropped.

    Errors keep the tail (the exception line is last); normal output keeps the head."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    dropped = len(text) - max_chars
    if keep_tail:
        return f"[... {dropped} chars truncated]\n" + text[-max_chars:]
    return text[:max_chars] + f"\n[... {dropped} chars truncated]"


def render_result(result, max_chars: int, timeout_s: float) -> str:
    """What the model sees from one execution: stdout, or an error summary.

    ok -> stdout; error -> stdout then stderr (traceback); timeout -> a TimeoutError line
    (after any partial stdout); any other status ("killed", "oom", ...) -> a line naming it
    plus stderr. The text is capped to ``max_chars`` with a truncation marker."""
    status = str(getattr(result, "status", "error"))
    stdout = str(getattr(result, "stdout", "") or "")
    stderr = str(getattr(result, "stderr", "") or "")
    if status == "ok":
        return cap(stdout.rstrip("\n"), max_chars)
    if status == "timeout":
        text = stdout.rstrip("\n")
        text = (text + "\n" if text else "") + f"TimeoutError: execution exceeded {timeout_s:g} s"
        return cap(text, max_chars, keep_tail=True)
    if status == "error":
        text = "\n".join(s for s in (stdout.rstrip("\n"), stderr.rstrip("\n")) if s)
        return cap(text or "Error", max_chars, keep_tail=True)
    text = "\n".join(s for s in (stdout.rstrip("\n"), stderr.rstrip("\n"), f"Execution {status}") if s)
    return cap(text, max_chars, keep_tail=True)


def output_block(template: str, output: str, generated_text: str) -> str:
    """The inserted text: ``template`` filled with ``output``.

    If the model already began the output block itself (its text ends with the template's
    opening, e.g. "```output" with a "```output" stop string), only the rest is inserted so the
    fence is not written twice; a missing newline before the block is added."""
    filled = template.format(output=output)
    opening = template.split("{output}", 1)[0]
    for head in (opening, opening.rstrip("\n")):
        if head and generated_text.endswith(head):
            return filled[len(head):]
    if generated_text and not generated_text.endswith("\n"):
        return "\n" + filled
    return filled
