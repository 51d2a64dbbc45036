"""Math-answer rewards: the completion's final answer vs the ground truth, scored 1.0 / 0.0.

All the work is done by ``rewards.math`` (extraction strategies, equivalence policy, bounded
sympy fallback); this module registers the rewards (and `extract_boxed` / `answers_equivalent` for callers that
want one piece).

Registered rewards (the extraction strategy can be overridden per sample with
``metadata["answer_strategy"]``):
  math_answer       last ``\\boxed{}`` only: rewards the answer format the prompt asks for
  math_answer_auto  "auto" strategy: box, ``####``, ``Answer:`` line, bold, bare answer
  gsm8k_answer      "gsm8k" strategy: ``#### N``, box, ``Answer:`` line, last number

Percent policy (``Policy.percent="either"``): ``50\\%`` equals ``50`` and ``0.5``; ``50`` does not
equal ``0.5``. See ``rewards.math.compare.Policy`` for tolerance and the other rules.
"""

from __future__ import annotations

from typing import Any

from rewards.math import Policy, is_equivalent, verify_detailed
from rewards.math.extract import STOP, boxed
from rewards.registry import register_reward
from rewards.schema import RewardResult

_DEFAULT_REL_TOL = 1e-9


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` in ``text`` (None if absent or truncated)."""
    if not isinstance(text, str):
        return None
    found = boxed(text)
    return None if found is STOP else found


def answers_equivalent(pred: Any, gold: Any, rel_tol: float = _DEFAULT_REL_TOL) -> bool:
    """True if ``pred`` and ``gold`` denote the same answer (``rewards.math.is_equivalent``). Never raises."""
    policy = None if rel_tol == _DEFAULT_REL_TOL else Policy(rel_tol=rel_tol)
    return is_equivalent(pred, gold, policy)


# Verdicts where the verifier itself raised (our comparer, or sympy in its worker): the reward
# could not be computed, so the item is a failed RewardResult (the pool's failure_score, counted
# in reward/failures and reward/failed_exception), not a zero for a wrong answer.
VERIFIER_FAILURES = ("error", "sympy_error")


def _score(completion: str, ground_truth: str, metadata: dict, strategy: str) -> dict | RewardResult:
    strategy = (metadata or {}).get("answer_strategy", strategy)
    res = verify_detailed(completion, ground_truth, strategy)
    if res.reason in VERIFIER_FAILURES:
        return RewardResult.failure(f"exception: math verifier {res.reason}: {res.method}")
    out = {"score": 1.0 if res.correct else 0.0, "correct": res.correct, "extracted": res.extracted}
    if res.reason in ("timeout", "too_large"):  # surfaced in RewardResult.info
        out["reason"] = res.reason
    return out


@register_reward("math_answer")
def math_answer(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """1.0 if the completion's last boxed answer matches the ground truth, else 0.0."""
    return _score(completion, ground_truth, metadata, "boxed")


@register_reward("math_answer_auto")
def math_answer_auto(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """Like ``math_answer`` but also accepts ``####``, ``Answer:`` lines, bold and bare answers."""
    return _score(completion, ground_truth, metadata, "auto")


@register_reward("gsm8k_answer")
def gsm8k_answer(prompt: str, completion: str, ground_truth: str, metadata: dict) -> dict:
    """GSM8K-style: ``#### N`` first, falling back to a box, an answer line, then the last number."""
    return _score(completion, ground_truth, metadata, "gsm8k")
