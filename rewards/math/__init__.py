"""Math answer verification: extract a model's final answer and decide if it equals the reference.

    from rewards.math import verify
    verify(r"... so the answer is \\boxed{\\dfrac{1}{2}}", "0.5")      # True

Public pieces: ``extract_answer(text, strategy)`` (strategies by name, see ``extract``),
``is_equivalent(pred, gold, policy)``, ``verify_detailed(...) -> VerifyResult`` (with a reason),
``Policy`` (tolerance, percent and assignment rules), ``register_strategy``. Model output is
parsed by our own parser into tuples and never evaluated; see ``parser`` and ``sympy_pool``.
"""

from rewards.math.compare import Policy
from rewards.math.extract import STRATEGIES, extract_answer, extract_gold, register_strategy
from rewards.math.verifier import VerifyResult, check_equivalence, is_equivalent, verify, verify_detailed


def warmup() -> None:
    """Start the sympy worker(s) now so the first undecided check does not wait for them."""
    from rewards.math.sympy_pool import get_pool

    get_pool().prestart()


__all__ = [
    "verify",
    "verify_detailed",
    "VerifyResult",
    "extract_answer",
    "extract_gold",
    "is_equivalent",
    "check_equivalence",
    "Policy",
    "STRATEGIES",
    "register_strategy",
    "warmup",
]
