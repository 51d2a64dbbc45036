"""The result of one sandboxed execution."""
from __future__ import annotations

from dataclasses import dataclass

OK, ERROR, TIMEOUT, KILLED = "ok", "error", "timeout", "killed"


@dataclass
class RunResult:
    """What one call returned.

    status, exactly one of:
      - ``"ok"``: the code ran to the end (or called ``sys.exit(0)`` / ``exit()``); exit_code 0.
      - ``"error"``: an uncaught exception (exit_code 1, traceback in stderr, ``error`` holds
        its last line), ``sys.exit(n)`` with n != 0 (exit_code n), or the interpreter exited
        by itself with a nonzero code (``os._exit(n)``).
      - ``"timeout"``: the wall-clock limit (``timeout_s``) or the CPU-time limit was reached
        (``reason`` says which); exit_code None. stdout/stderr hold what was printed before
        when the cell could still be interrupted, else nothing.
      - ``"killed"``: the sandbox was killed by a limit or a signal: memory cap
        (``reason="memory"``), a signal (``reason="signal SIGSEGV"``, exit_code -signum), file
        size cap, or a broken driver protocol.
    ``reason`` (else None): "SystemExit" (the code called sys.exit/exit, any status), "wall
    clock", "wall clock (hard kill)" (the cell ignored the interrupt), "cpu time", "memory",
    "signal NAME", "file size", "protocol", "interpreter exited", or "process/thread limit
    reached" (a fork/thread was refused during this call; the status is what the code did next).
    Output limits do not change status: ``truncated`` is True when stdout or stderr went past
    ``Limits.max_output_bytes``; the text then ends with a ``[... N bytes truncated ...]`` marker.

    ``session_reset``: the sandbox ended with this call (always after timeout and killed, and
    after the interpreter exited itself); a session's names are gone and its next call starts
    in a fresh sandbox. Errors (exceptions) keep the session's state.
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    exit_code: int | None = 0
    truncated: bool = False
    session_reset: bool = False
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


def truncation_marker(dropped: int) -> str:
    return f"\n[... {dropped} bytes truncated ...]\n"
