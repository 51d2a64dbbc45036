"""Unit tests for rewards.math: equivalence per answer category, extraction strategies, policies,
the sympy-worker timeout path, no evaluation of model output, and the labelled benchmark set."""

from __future__ import annotations

import builtins
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import RewardInput, get_reward
from rewards.math import (
    Policy,
    VerifyResult,
    check_equivalence,
    extract_answer,
    extract_gold,
    is_equivalent,
    register_strategy,
    verify,
    verify_detailed,
)
from rewards.math.sympy_pool import SympyPool, get_pool
from rewards.registry import call_reward

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = os.path.join(ROOT, "benchmarks", "data", "verifier_cases.jsonl")

# (category, prediction, gold, expected)
CASES_BY_CATEGORY = [
    ("integers", "1,234", "1234", True), ("integers", "42.00", "42", True), ("integers", "1,234", "1243", False),
    ("integers", "7", "-7", False), ("integers", r"10,\!080", "10080", True),
    ("percent", r"50\%", "50", True), ("percent", r"50\%", "0.5", True), ("percent", "50", "0.5", False),
    ("percent", r"5\%", "0.5", False),
    ("units", "5 cm", "5", True), (r"units", r"\$5", "5 dollars", True), ("units", r"5\text{ inches}", "5", True),
    ("units", r"864 \mbox{ inches}^2", "864", True), ("units", "6 cm", "5", False),
    ("leading_zeros", "025", "25", True), ("leading_zeros", "250", "025", False),
    ("fractions", r"\frac12", "0.5", True), ("fractions", r"\dfrac{1}{2}", "1/2", True), ("fractions", r"\tfrac12", "0.5", True),
    ("fractions", r"{1 \over 2}", r"\frac{1}{2}", True), ("fractions", r"\frac{1}{2}", r"\frac{2}{1}", False),
    ("fractions", "0.333", r"\frac13", False), ("fractions", r"0.\overline{3}", r"\frac13", True),
    ("mixed", r"2\frac{1}{2}", r"\frac52", True), ("mixed", "2 1/2", "2.5", True), ("mixed", r"2\frac{1}{2}", "1", False),
    ("radicals", r"\sqrt{8}", r"2\sqrt{2}", True), ("radicals", r"\sqrt[3]{16}", r"2\sqrt[3]{2}", True),
    ("radicals", r"\sqrt{12}", r"3\sqrt{2}", False), ("radicals", r"\sqrt[3]{-8}", "-2", True),
    ("pi_e", r"\frac{\pi}{2}", r"0.5\pi", True), ("pi_e", r"e^{2}", r"\mathrm{e}^2", True), ("pi_e", r"2e", "e^2", False),
    ("pi_e", r"\cos\frac{\pi}{3}", r"\frac12", True),
    ("scientific", r"1.5\times10^{3}", "1500", True), ("scientific", "1.5e3", "1500", True), ("scientific", "1.5e3", "150", False),
    ("scientific", r"2.5\times10^{-4}", "0.0025", False),
    ("symbolic", "x^2+2x+1", "(x+1)^2", True), ("symbolic", "x^2+1", "(x+1)^2", False), ("symbolic", "p - q", "q - p", False),
    ("symbolic", r"\sqrt{x^2}", "|x|", True), ("symbolic", r"\sqrt{x^2}", "x", False),
    ("symbolic", r"\cos^{-1} x", r"\arccos x", True), ("symbolic", "-(I(0))", "I(0)", False),  # I(0) is not I*0
    ("symbolic", r"\lfloor\sqrt{n-2}\rfloor", r"\lfloor\sqrt{n-1}\rfloor", False),  # differ only at n = k^2+1
    ("symbolic", r"\lfloor \frac{n}{2} \rfloor", r"\lfloor n/2 \rfloor", True),
    ("intervals", "(1,2]", "[1,2]", False), ("intervals", "(1,2]", r"\left(1, 2\right]", True),
    ("intervals", "x>2", r"(2,\infty)", True),
    ("intervals", r"x \ge 2", r"(2,\infty)", False), ("intervals", r"(9,36)\cup(0,9)", r"(0,9)\cup(9,36)", True),
    ("intervals", r"x<2 \text{ or } x>3", r"(-\infty,2)\cup(3,\infty)", True),
    ("sets_tuples", r"\{1,2\}", r"\{2,1\}", True), ("sets_tuples", "(1,2)", "(2,1)", False), ("sets_tuples", "1, -2", "-2, 1", True),
    ("sets_tuples", r"1+\sqrt{19}, 1-\sqrt{19}", r"1 \pm \sqrt{19}", True), ("sets_tuples", r"1+\sqrt{19}", r"1 \pm \sqrt{19}", False),
    ("matrices", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{bmatrix}1&2\\3&4\end{bmatrix}", True),
    ("matrices", r"\begin{pmatrix}1&3\\2&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", False),
    ("matrices", r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1&2\end{pmatrix}", False),
    ("equations", "3x-y+13=0", "3x+4y+14=0", False), ("equations", "y=2x+1", "2x-y+1=0", True), ("equations", "x>2", "2<x", True),
    ("equations", "-x > -2", "x > 2", False), ("equations", "2x^2+2y^2=2", "x^2+y^2=1", True),
    ("assignment", "x=5", "5", True), ("assignment", "5", "x = 5", True), ("assignment", "x=-5", "5", False),
    ("assignment", "x^2=25", "5", False), ("assignment", "f(x)=x+x", "f(x)=2x", True), ("assignment", "f(x)=3x", "f(x)=2x", False),
    ("huge", r"\frac{1}{2006!}", r"\frac{1}{2004!}", False), ("huge", r"2006\cdot 2005!", "2006!", True),
    ("huge", r"10^{100}+1", r"10^{100}", False), ("huge", r"\sin(10^{100}+1)", r"\sin(10^{100})", False),
    ("huge", r"(10^{100}+\sqrt2)-10^{100}", r"\sqrt2", True), ("huge", "x+10^{100}+1", "x+10^{100}", False),
    ("tolerance", "3.14", r"\pi", False), ("tolerance", "1.4142135623730951", r"\sqrt2", True),
    ("tolerance", "1.41421356", r"\sqrt2", False),
    ("text", r"\text{Evelyn}", "evelyn", True), ("text", "(C)", r"\text{(C)}", True), ("text", "B", r"\text{(C)}", False),
    ("complex", "6-5i", "-5i+6", True), ("complex", "(1+i)^2", "2i", True), ("complex", "6+5i", "6-5i", False),
    ("degrees", r"90^\circ", "90", True), ("degrees", r"91^\circ", "90", False),
]


@pytest.mark.parametrize("category, pred, gold, expected", CASES_BY_CATEGORY)
def test_equivalence_by_category(category, pred, gold, expected):
    result = check_equivalence(pred, gold)
    assert result.correct is expected, (category, result)
    assert result.reason in ("equal", "not_equal")


def test_every_category_has_true_and_false_cases():
    seen = Counter((c, e) for c, _, _, e in CASES_BY_CATEGORY)
    for cat in {c for c, *_ in CASES_BY_CATEGORY}:
        assert seen[(cat, True)] and seen[(cat, False)], cat


# ----------------------------------------------------------------------------- policies


def test_percent_policies():
    assert is_equivalent(r"50\%", "0.5") and is_equivalent(r"50\%", "50")
    strip, value = Policy(percent="strip"), Policy(percent="value")
    assert is_equivalent(r"50\%", "50", strip) and not is_equivalent(r"50\%", "0.5", strip)
    assert is_equivalent(r"50\%", "0.5", value) and not is_equivalent(r"50\%", "50", value)
    with pytest.raises(ValueError):
        Policy(percent="sometimes")


def test_tolerance_policy():
    assert not is_equivalent("3.14", r"\pi")
    assert is_equivalent("3.14", r"\pi", Policy.approximate(rel_tol=1e-3))
    assert not is_equivalent("0.333", r"\frac13")  # rationals are exact by default
    assert is_equivalent("0.333", r"\frac13", Policy.approximate(rel_tol=1e-2))
    assert not is_equivalent("1e300", "1.0000000000001e300")


def test_assignment_can_be_disabled():
    assert not is_equivalent("x=5", "5", Policy(allow_assignment=False))


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, strategy, expected",
    [
        (r"so \boxed{\frac{\sqrt{3}}{2}}.", "boxed", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{1} then \fbox{8}", "boxed", "8"),
        (r"first \boxed{1} and later \boxed{2", "boxed", None),  # truncated last box: no rescue
        (r"first \boxed{1} and later \boxed{2", "auto", None),
        ("the answer is 4", "boxed", None),
        ("Janet sells 9 eggs.\n#### 18", "gsm8k", "18"),
        ("She pays 3 + 4 = 7 dollars.", "gsm8k", "7"),
        ("Compute.\nAnswer: 42", "answer_line", "42"),
        ("The final answer is $\\frac{3}{4}$. I hope it is correct.", "auto", r"\frac{3}{4}"),
        ("**Final Answer**\n\n$15$", "auto", "15"),
        ("So the result is **1,250**", "bold", "1,250"),
        ("**Step 1**: add. The result is **13**", "auto", "13"),
        ("$x = 5$", "auto", "x = 5"),
        ("a long answer with no marker\nover two lines", "auto", None),
        (r"<think>maybe \boxed{3}</think> so \boxed{4}", "auto", "4"),
        (r"<think>I get \boxed{5}, hmm", "auto", None),  # reasoning never closed: no answer
        ("We get 3 and then 12 apples.", "last_number", "12"),
    ],
)
def test_extraction_strategies(text, strategy, expected):
    assert extract_answer(text, strategy) == expected


def test_unknown_and_custom_strategy():
    with pytest.raises(ValueError, match="unknown extraction strategy"):
        extract_answer("x", "nope")
    register_strategy("hash_then_bold_test", ("hash", "bold"))
    assert extract_answer("**7**", "hash_then_bold_test") == "7"
    with pytest.raises(ValueError):
        register_strategy("bad_test", ("no_such_step",))


def test_gold_can_be_a_full_solution():
    assert extract_gold(r"Adding, we get $\boxed{7}$.") == "7"
    assert extract_gold("9 eggs * $2 = $18\n#### 18") == "18"
    assert verify(r"\boxed{18}", "She makes $18.\n#### 18")


def test_verify_detailed_reports():
    res = verify_detailed(r"The answer is \boxed{\dfrac{1}{2}}", "0.5")
    assert isinstance(res, VerifyResult) and res.correct and res.reason == "equal"
    assert res.extracted == r"\dfrac{1}{2}" and res.method.startswith("boxed:")
    assert verify_detailed("no answer here at all, sorry\nreally", "1").reason == "no_answer"
    assert verify_detailed(r"\boxed{1}", "").reason == "no_gold"
    assert verify_detailed(r"\boxed{10^{10^{10}}}", "1").reason == "too_large"


# ----------------------------------------------------------------------------- rewards


def test_registered_math_rewards():
    item = RewardInput("q", "Total: 1,200\n#### 1,200", "1200")
    assert call_reward(get_reward("gsm8k_answer"), item).correct is True
    assert call_reward(get_reward("math_answer"), item).correct is False  # boxed only
    item = RewardInput("q", "Answer: 1,200", "1200", {"answer_strategy": "auto"})
    assert call_reward(get_reward("math_answer"), item).correct is True
    assert call_reward(get_reward("math_answer_auto"), RewardInput("q", "**x = 3**", "3")).correct is True


# ----------------------------------------------------------------------------- safety and time


def test_model_output_is_never_evaluated(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"exec(\"open('{marker}', 'w')\")",
        f"eval(\"__import__('os').system('touch {marker}')\")",
        "().__class__.__bases__[0].__subclasses__()",
        r"\input{/etc/passwd}",
    ]
    check_equivalence("x^2+1", "1+x^2")  # load every lazy import before guarding eval/exec

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec called during verification")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    for payload in payloads:
        for gold in ("0", "1", payload + "1"):
            assert check_equivalence(payload, gold).correct is False
            assert verify(r"\boxed{" + payload + "}", gold) is False
    assert not marker.exists()


@pytest.mark.parametrize(
    "pred, expected",
    [("9^9^9^9^9", False), ("2^{2^{2^{2^{2^{2}}}}}", False), (r"(10^{1000})!", False), ("(" * 400 + "1" + ")" * 400, True),
     ("{" * 300, False), ("x" * 900, False), (r"\sqrt{" * 200 + "2" + "}" * 200, False), ("1/" * 250 + "1", True),
     (r"e^{e^{e^{e^{10}}}}", False), (r"\binom{10^{9}}{10^{8}}", False)],
)
def test_hostile_inputs_are_fast(pred, expected):
    start = time.monotonic()
    assert check_equivalence(pred, "1", Policy(use_sympy=False)).correct is expected
    assert time.monotonic() - start < 2.0


@pytest.fixture(scope="module")
def warm_pool():
    pool = get_pool()
    assert pool.run("sleep", 0, 60) == ("ok", True)  # worker started and ready
    return pool


def test_pool_timeout_kills_and_replaces(warm_pool):
    start = time.monotonic()
    assert warm_pool.run("sleep", 30, 0.3) == ("timeout", None)
    assert time.monotonic() - start < 1.5
    assert warm_pool.run("sleep", 0, 60) == ("ok", True)  # the replacement works


def test_slow_sympy_check_is_a_timeout_verdict(warm_pool):
    slow = ("x^{31}-x^{17}+5x^{4}-9=0", "x^{31}-x^{17}+5x^{4}-8=0")  # sympy solveset on degree-31 polynomials
    start = time.monotonic()
    res = check_equivalence(*slow, Policy(timeout_s=0.5))
    elapsed = time.monotonic() - start
    assert res.correct is False and res.reason == "timeout", res
    assert elapsed < 1.5
    warm_pool.run("sleep", 0, 60)  # wait for the replacement worker to start (not part of the bound)
    ok = check_equivalence("(x-2)^2=0", "x=2", Policy(timeout_s=20))
    assert ok.correct and ok.method == "sympy"
    assert check_equivalence(r"\frac12", "0.5").correct  # in-process path unaffected


def test_private_pool_from_threads():
    pool = SympyPool(size=2)
    try:
        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(lambda s: pool.run("sleep", s, 60), [0.01] * 6))
        assert results == [("ok", True)] * 6
    finally:
        pool.close()


def test_verify_is_thread_safe():
    pairs = [(r"\boxed{\frac{1}{2}}", "0.5", True), (r"\boxed{x^2+2x+1}", "(x+1)^2", True), (r"\boxed{(1,2]}", "[1,2]", False)] * 20
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda t: verify(t[0], t[1]), pairs))
    assert got == [t[2] for t in pairs]


# ----------------------------------------------------------------------------- labelled set


def test_labelled_set_is_large_and_covers_every_category():
    rows = [json.loads(line) for line in open(CASES)]
    assert len(rows) >= 300
    cats = Counter(r["category"] for r in rows)
    required = {
        "integers_decimals", "percent", "units_currency", "leading_zeros", "fractions", "mixed_numbers", "radicals",
        "pi_e", "scientific", "symbolic", "intervals", "sets_tuples", "matrices", "equations_inequalities",
        "assignment", "huge_values", "tolerance", "extraction_boxed", "extraction_gsm8k", "extraction_answer_line",
        "extraction_bold", "extraction_think",
    }
    assert required <= set(cats)
    negatives = Counter(r["category"] for r in rows if not r["expected"])
    for cat in required:
        assert negatives[cat] >= 1, f"{cat} has no hard negatives"
    assert sum(negatives.values()) >= 100
    for r in rows:
        assert set(r) >= {"pred", "gold", "expected", "category", "mode"} and isinstance(r["expected"], bool)


# ----------------------------------------------------------------------------- sympy errors


SYMPY_RAISES = (r"\boxed{2i > 0}", "1 > 0")  # sympy: "Invalid comparison of non-real 2*I"


def test_a_sympy_exception_is_a_recorded_reason_not_a_wrong_answer(warm_pool):
    res = verify_detailed(*SYMPY_RAISES, policy=Policy(timeout_s=20))
    assert res.correct is False and res.reason == "sympy_error", res
    assert "TypeError" in res.method and "non-real" in res.method
    assert check_equivalence("(x-2)^2=0", "x=2", Policy(timeout_s=20)).reason == "equal"  # worker still fine


def test_a_sympy_exception_is_counted_as_a_reward_failure(warm_pool):
    from rewards.pool import failure_kind

    for name in ("math_answer", "math_answer_auto"):
        result = call_reward(get_reward(name), RewardInput("q", *SYMPY_RAISES), failure_score=-1.0)
        assert result.failed and result.score == -1.0 and result.correct is None, result
        assert "sympy_error" in result.reason and failure_kind(result.reason) == "exception"
    # a genuine wrong answer is still a plain zero, not a failure
    wrong = call_reward(get_reward("math_answer"), RewardInput("q", r"\boxed{x > 2}", "x > 3"))
    assert not wrong.failed and wrong.score == 0.0 and wrong.correct is False


def test_sympy_errors_that_do_not_decide_the_answer_are_ignored():
    from rewards.math import _sympy_worker as worker
    from rewards.math.verifier import _prepare

    rel_p, rel_g = _prepare("2i > 0").node, _prepare("1 > 0").node  # sympy raises on this pair
    one, two = _prepare("1").node, _prepare("2").node
    policy = Policy()
    # (2i > 0, 1) vs (1 > 0, 2): the second entries differ, so the error does not matter
    assert worker._handle("equal", (("seq", "(", ")", (rel_p, one)), ("seq", "(", ")", (rel_g, two)), policy)) is False
    # (2i > 0, 1) vs (1 > 0, 1): the verdict hinges on the check sympy could not run
    with pytest.raises(worker.SympyFailed, match="non-real"):
        worker._handle("equal", (("seq", "(", ")", (rel_p, one)), ("seq", "(", ")", (rel_g, one)), policy))
