"""Code-task reward: run the completion's last python block against test cases in the sandbox.

The tests come from ``metadata["tests"]`` (a list of assert statements or one string), else from
the ground truth. The score is the fraction of tests passed; ``correct`` means all of them. The
sandbox (tools_sandbox, bubblewrap) is what makes it safe to execute model-written code inside a
reward worker; the pool is per process and started on first use.
"""
from __future__ import annotations

import re

from rewards.registry import register_reward

_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.S)


def last_python_block(text: str) -> str | None:
    blocks = _BLOCK.findall(text or "")
    return blocks[-1] if blocks else None


@register_reward("code_tests")
def code_tests(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    from tools_sandbox import run_tests

    code = last_python_block(completion)
    tests = (metadata or {}).get("tests") or ground_truth
    if code is None:
        return {"score": 0.0, "correct": False, "passed": 0, "reason": "no python block"}
    timeout_s = float((metadata or {}).get("test_timeout_s", 5.0))
    passed, total, results = run_tests(code, tests, timeout_s=timeout_s)
    failures = [f"{r.test.strip()[:80]}: {r.error or r.status}" for r in results if not r.passed][:3]
    return {"score": passed / total if total else 0.0, "correct": total > 0 and passed == total,
            "passed": passed, "total": total, "failures": failures}
