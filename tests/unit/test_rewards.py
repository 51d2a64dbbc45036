"""Unit tests for rewards: answer extraction/equivalence, the math_answer reward, and the registry."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest

import rewards
from rewards import RewardError, RewardInput, RewardResult, get_reward, register_reward
from rewards import registry
from rewards.math_answer import answers_equivalent, extract_boxed, math_answer
from rewards.registry import call_reward, normalize_result


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1}, then \boxed{2}", "2"),
        (r"\fbox{7}", "7"),
        (r"\boxed{1} then \fbox{8}", "8"),
        (r"$\boxed 5$", "5"),
        (r"\boxed { 3 }", "3"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        ("no box here", None),
        ("", None),
        (r"\boxed{\frac{1}{2}", None),  # unbalanced (truncated generation)
        (r"\boxed{1} and later \boxed{2", None),  # last box unbalanced: no rescue by earlier box
        (r"\boxedfoo{3}", None),  # a different macro
        (r"\boxed{9} is how we \boxed.", "9"),  # argument-less \boxed is not an answer
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_non_string():
    assert extract_boxed(None) is None  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("1,234", "1234"),
        ("0.5", r"\frac{1}{2}"),
        (r"\dfrac{3}{4}", "0.75"),
        ("025", "25"),
        (r"50\%", "50"),  # policy "either": 50% equals 50 and 0.5 (but 50 != 0.5)
        (r"50\%", "0.5"),
        ("x+1", "1+x"),  # symbolic expressions compare by value
        (r"2\sqrt{2}", r"\sqrt{8}"),  # radicals
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
        (r"-\frac{1}{2}", "-0.5"),
        (r"\frac{-1}{2}", "-1/2"),
        (r"\frac12", "1/2"),
        ("1e3", "1000"),
        ("2.5E-3", "0.0025"),
        ("12.0", "12"),
        ("-0", "0"),
        ("(3)", "3"),
        (r"\text{(B)}", "(B)"),
        (r"2\pi", r"\pi + \pi"),
        (r"\sqrt{2}", "1.4142135623730951"),  # closed form vs float: tolerance
    ],
)
def test_equivalent(pred, gold):
    assert answers_equivalent(pred, gold)
    assert answers_equivalent(gold, pred)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("-3", "3"),
        ("12", "13"),
        ("50", "0.5"),
        ("0.333333", r"\frac{1}{3}"),  # both rational: exact comparison
        (r"\pi", "3.14159"),
        ("x+1", "x+2"),
        ("1/0", "1"),
        ("", ""),
        ("", "0"),
        (r"\frac{1}{2", "0.5"),
        ("9^9^9^9", "1"),  # rejected by the exponent guard instead of hanging
        ("__import__('os').system('true')", "0"),
        ("1" * 300, "1" * 300 + "0"),
        (None, "1"),
    ],
)
def test_not_equivalent(pred, gold):
    assert not answers_equivalent(pred, gold)


def test_scientific_notation_is_exact_and_bounded():
    assert answers_equivalent("1e300", "10e299")
    assert not answers_equivalent("1e300", "1.0000000000001e300")
    assert not answers_equivalent("1e5000", "1e5000 + 1")  # refused rather than building a huge integer


def test_equivalent_never_raises_on_garbage():
    # Garbage is a wrong answer (False, either side), not an exception and not a match with "1".
    for junk in [r"\frac{}{}", "{{{", "}}}", r"\sqrt", "^", "1/", "\\", "(((", "1..2", "e5", r"\frac{1}{0}"]:
        assert answers_equivalent(junk, "1") is False, junk
        assert answers_equivalent("1", junk) is False, junk


# ----------------------------------------------------------------------------- math_answer reward


def test_math_answer_reward():
    out = math_answer("q", r"... so \boxed{\dfrac{1}{2}}", "0.5", {})
    assert out == {"score": 1.0, "correct": True, "extracted": r"\dfrac{1}{2}"}
    out = math_answer("q", r"\boxed{3}", "4", {})
    assert out == {"score": 0.0, "correct": False, "extracted": "3"}
    out = math_answer("q", "the answer is 4", "4", {})
    assert out == {"score": 0.0, "correct": False, "extracted": None}


def test_math_answer_gold_given_as_solution():
    assert math_answer("q", r"\boxed{7}", r"Adding, we get $\boxed{7}$.", {})["correct"] is True


def test_math_answer_is_registered_builtin():
    assert get_reward("math_answer") is math_answer
    res = call_reward(get_reward("math_answer"), RewardInput("q", r"\boxed{1,234}", "1234"))
    assert res == RewardResult(score=1.0, correct=True, info={"extracted": "1,234"})


# ----------------------------------------------------------------------------- registry


@pytest.fixture
def clean_registry(monkeypatch):
    """Isolate registrations made by a test from the process-wide registry."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _reward_a(prompt, completion, ground_truth, metadata):
    return 1.0


def _reward_b(prompt, completion, ground_truth, metadata):
    return 0.0


def test_register_and_get_by_name(clean_registry):
    register_reward("test_a")(_reward_a)
    assert get_reward("test_a") is _reward_a
    register_reward("test_a")(_reward_a)  # same function again is fine
    with pytest.raises(RewardError, match="already registered"):
        register_reward("test_a")(_reward_b)


def test_unknown_name_lists_registered(clean_registry):
    with pytest.raises(RewardError, match=r"unknown reward 'nope'.*math_answer"):
        get_reward("nope")


def test_get_reward_callable_passthrough():
    assert get_reward(_reward_a) is _reward_a


@pytest.mark.parametrize("bad", ["", "   ", ":fn", "mod:", 42])
def test_bad_specs(bad):
    with pytest.raises(RewardError):
        get_reward(bad)


def test_module_function_spec(tmp_path, monkeypatch):
    (tmp_path / "reward_mod_for_test.py").write_text(
        "def fn(prompt, completion, ground_truth, metadata):\n    return {'score': 0.5, 'correct': False}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("reward_mod_for_test:fn")
    assert fn("p", "c", "g", {}) == {"score": 0.5, "correct": False}
    with pytest.raises(RewardError, match="has no attribute 'missing'"):
        get_reward("reward_mod_for_test:missing")
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        get_reward("no_such_module_xyz:fn")
    sys.modules.pop("reward_mod_for_test", None)


def test_file_function_spec(tmp_path, monkeypatch):
    path = tmp_path / "my_reward_file.py"
    path.write_text(
        textwrap.dedent(
            """
            import dataclasses

            @dataclasses.dataclass
            class Box:
                value: float

            def fn(prompt, completion, ground_truth, metadata):
                return Box(len(completion)).value

            NOT_CALLABLE = 3
            """
        )
    )
    assert get_reward(f"{path}:fn")("p", "abc", "g", {}) == 3
    monkeypatch.chdir(tmp_path)
    assert get_reward("./my_reward_file.py:fn") is get_reward(f"{path}:fn")  # loaded once, relative to cwd
    with pytest.raises(RewardError, match="not a callable"):
        get_reward(f"{path}:NOT_CALLABLE")
    with pytest.raises(RewardError, match="file not found"):
        get_reward("does/not/exist.py:fn")


def test_file_spec_with_import_error(tmp_path):
    path = tmp_path / "broken_reward.py"
    path.write_text("raise RuntimeError('broken at import')\n")
    with pytest.raises(RewardError, match="broken at import"):
        get_reward(f"{path}:fn")


# ----------------------------------------------------------------------------- result normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        (1, RewardResult(score=1.0)),
        (0.25, RewardResult(score=0.25)),
        ({"score": 1, "correct": True, "why": "ok"}, RewardResult(score=1.0, correct=True, info={"why": "ok"})),
        ({"score": 0.0, "correct": 0}, RewardResult(score=0.0, correct=False)),
    ],
)
def test_normalize_result_ok(raw, expected):
    assert normalize_result(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        (float("nan"), "non-finite score: nan"),
        (math.inf, "non-finite score: inf"),
        ({"score": float("-inf")}, "non-finite score: -inf"),
        ("1.0", "bad return type: score is str"),
        (None, "bad return type: score is NoneType"),
        (True, "bad return type: score is bool"),
        ({"correct": True}, "bad return type: dict without 'score'"),
        ({"score": 1.0, "correct": "yes"}, "bad return type: 'correct' is str"),
    ],
)
def test_normalize_result_failures(raw, reason):
    res = normalize_result(raw, failure_score=-1.0)
    assert res.failed and res.score == -1.0 and res.correct is None
    assert res.reason.startswith(reason)


def test_call_reward_catches_exceptions():
    def boom(prompt, completion, ground_truth, metadata):
        raise ValueError("bad input")

    def exits(prompt, completion, ground_truth, metadata):
        sys.exit(2)

    item = RewardInput("p", "c", "g")
    assert call_reward(boom, item).reason == "exception: ValueError: bad input"
    assert call_reward(exits, item).reason == "exception: SystemExit: 2"


def test_package_exports_and_no_torch():
    assert set(rewards.__all__) == {"register_reward", "get_reward", "RewardInput", "RewardResult", "RewardPool", "RewardError"}
    import subprocess

    code = "import sys, rewards; bad = [m for m in ('torch', 'vllm', 'rollout', 'algorithms') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_repo_root())
    assert out.stdout.strip() == "[]"


def _repo_root() -> str:
    import os

    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
