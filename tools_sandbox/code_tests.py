"""Reward helper: run assertion test cases against model-written code in a sandbox.

The code runs once in a fresh session, then each test runs as its own cell in that session,
so one failing test does not hide the others. A test passes only if its cell finished
normally: an exception, a timeout, ``sys.exit(...)`` or the interpreter exiting all fail it
(``sys.exit(0)`` / ``os._exit(0)`` are the classic ways to fake a pass). After a timeout or a
kill, the code is run again in a fresh sandbox before the next test.

Limits: the code and the tests share one interpreter, so code that is determined to cheat
(objects whose ``__eq__`` is always True, patched builtins) can still fool in-process
assertions. The sandbox protects the machine, not the reward's semantics.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from tools_sandbox.pool import SandboxPool, default_pool
from tools_sandbox.result import OK, RunResult


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    test: str
    passed: bool
    status: str  # the cell's RunResult.status ("skipped" when the code itself failed)
    error: str | None = None
    duration_s: float = 0.0


def split_tests(tests: list[str] | str) -> list[str]:
    """A list is taken as is; a string is split into its top-level statements, each non-assert
    statement (import, helper) being glued to the assert that follows it."""
    if not isinstance(tests, str):
        return [t for t in tests if t.strip()]
    tree = ast.parse(tests)
    lines = tests.splitlines(True)
    out, pending = [], []
    for node in tree.body:
        start = node.lineno - 1
        if getattr(node, "decorator_list", None):
            start = min(d.lineno for d in node.decorator_list) - 1
        pending.append("".join(lines[start:node.end_lineno]))
        if isinstance(node, ast.Assert):
            out.append("".join(pending))
            pending = []
    if pending and out:
        out[-1] += "".join(pending)
    elif pending:
        out.append("".join(pending))
    return out


def _passed(res: RunResult) -> bool:
    return res.status == OK and not res.session_reset and res.reason is None


def _why(res: RunResult) -> str:
    if res.status == OK:
        return f"ended by {res.reason}" if res.reason else "interpreter exited"
    return res.error or res.reason or res.status


def run_tests(code: str, tests: list[str] | str, timeout_s: float = 5.0, *,
              pool: SandboxPool | None = None) -> tuple[int, int, list[TestResult]]:
    """(passed, total, per-test results); ``timeout_s`` applies to the code and to each test."""
    cases = split_tests(tests)
    pool = pool or default_pool()
    results: list[TestResult] = []
    with pool.session() as session:
        need_code = True
        for case in cases:
            if need_code:
                first = session.run(code, timeout_s, display=False)
                if not _passed(first):
                    why = "code failed: " + _why(first)
                    results += [TestResult(c, False, "skipped", why) for c in
                                cases[len(results):]]
                    break
                need_code = False
            res = session.run(case, timeout_s, display=False)
            results.append(TestResult(case, _passed(res), res.status,
                                      None if _passed(res) else _why(res), res.duration_s))
            need_code = res.session_reset
    passed = sum(r.passed for r in results)
    return passed, len(cases), results
