"""The code-task reward runs model code against tests in the sandbox, through the reward pool."""
from __future__ import annotations

from pathlib import Path

import pytest

from rewards import RewardInput, RewardPool, get_reward
from rewards.code import last_python_block
from tools_sandbox.hostcheck import sandbox_or_skip

README = Path(__file__).resolve().parents[2] / "README.md"  # a project file the sandbox must not see


@pytest.fixture()
def needs_bwrap():
    """Skips only where bwrap is missing or the kernel forbids its namespaces; fails otherwise."""
    sandbox_or_skip()


GOOD = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"]


def test_last_python_block():
    assert last_python_block("```python\na=1\n```\ntext\n```py\nb=2\n```") == "b=2\n"
    assert last_python_block("no code") is None


def test_code_tests_scores_the_fraction_passed(needs_bwrap):
    fn = get_reward("code_tests")
    good = fn("p", GOOD, "", {"tests": TESTS})
    assert good["score"] == 1.0 and good["correct"] and good["passed"] == 3
    wrong = fn("p", WRONG, "", {"tests": TESTS})
    assert wrong["score"] == pytest.approx(1 / 3) and not wrong["correct"]  # only 0 - 0 == 0 passes
    assert fn("p", "no code", "", {"tests": TESTS})["score"] == 0.0
    hostile = fn("p", f"```python\nimport os\nopen({str(README)!r}).read()\n```", "", {"tests": TESTS})
    assert hostile["score"] == 0.0 and "code failed" in hostile["failures"][0]


def test_code_tests_through_the_reward_pool(needs_bwrap):
    items = [RewardInput(prompt="p", completion=c, ground_truth="\n".join(TESTS), metadata={})
             for c in (GOOD, WRONG)]
    with RewardPool("code_tests", num_workers=1, timeout_s=60.0) as pool:
        results = pool.score(items)
    assert [r.correct for r in results] == [True, False]
    assert results[1].score == pytest.approx(1 / 3)
