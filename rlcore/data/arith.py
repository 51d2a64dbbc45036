"""Synthetic arithmetic task with graded difficulty.

A problem is a chain of single operations on small non-negative integers, e.g. ``3+4+5``.
Difficulty is the number of operands (2 = easy ... 4 = hard by default).

Prompt choice: the model is tiny, so every prompt token costs. The user message is just the
expression followed by ``=`` (``"3+4+5="``, 6 tokens with digit-split tokenizers) and the
target completion is ``\\boxed{12}`` (the model then emits its eos, ``<|im_end|>``). This is
the format the CPU notes measured (a 3.2M model reaches ~52% after ~300 SFT steps on sums of
2-4 single-digit operands, RL lifts it to ~90%). ``ArithConfig.prompt_template`` changes it.

Records use the common record format (see :mod:`rlcore.data.loader`)::

    {"id": "arith-0-000007", "prompt": "3+4+5=", "answer": "12", "difficulty": 3,
     "metadata": {"task": "arith", "problem": "3+4+5", "difficulty": 3, "num_operands": 3,
                  "answer_format": "boxed"}}

``prompt`` is the user-message text; ``answer`` is the bare ground truth (no ``\\boxed``).
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

__all__ = [
    "ArithConfig",
    "format_prompt",
    "format_answer",
    "generate_problems",
    "sft_completion",
    "train_eval_split",
    "problem_space_size",
    "add_teacher_slips",
    "SLIPS",
]

_ALLOWED_OPS = "+-"
_FORMATS = ("boxed", "plain", "steps", "tool")


@dataclass
class ArithConfig:
    min_operands: int = 2
    max_operands: int = 4
    max_operand: int = 9  # operands are drawn uniformly from [0, max_operand]
    # Widely spread difficulty: each problem draws its operand bound from this list (e.g. 9, 99,
    # 999) instead of max_operand; its difficulty is then "<operands>x<bound>" (e.g. "3x99").
    operand_ranges: tuple[int, ...] = ()
    ops: str = "+"  # operators to draw from, subset of "+-"; evaluated left to right
    answer_format: str = "boxed"  # "boxed" -> \boxed{12}; "plain" -> 12; "steps" -> 3+4=7 7+5=12 \boxed{12}
    # "tool" -> a fenced python block that prints the expression, its output block, \boxed{12}
    prompt_template: str = "{problem}="  # user-message text; "{problem}" is the expression

    def __post_init__(self) -> None:
        if not (1 <= self.min_operands <= self.max_operands):
            raise ValueError(f"need 1 <= min_operands <= max_operands, got {self.min_operands}, {self.max_operands}")
        if self.max_operand < 0 or any(r < 0 for r in self.operand_ranges):
            raise ValueError(f"max_operand and operand_ranges must be >= 0, got {self.max_operand}, "
                             f"{list(self.operand_ranges)}")
        if not self.ops or any(o not in _ALLOWED_OPS for o in self.ops):
            raise ValueError(f"ops must be a non-empty subset of {_ALLOWED_OPS!r}, got {self.ops!r}")
        if self.answer_format not in _FORMATS:
            raise ValueError(f"answer_format must be one of {_FORMATS}, got {self.answer_format!r}")
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{problem}'")


def format_prompt(problem: str, cfg: ArithConfig | None = None) -> str:
    """User-message text for an expression, e.g. ``"3+4+5"`` -> ``"3+4+5="``."""
    cfg = cfg or ArithConfig()
    return cfg.prompt_template.format(problem=problem)


def worked_steps(problem: str) -> str:
    """Left-to-right partial results, e.g. ``"3+4+5"`` -> ``"3+4=7 7+5=12"``.

    Every step is a one-operation fact shared across problems, so a model trained on some
    problems can solve held-out ones by composing steps it has seen: the chain of thought is
    what makes held-out generalisation (and RL's gains on it) possible for a tiny model.
    """
    parts = re.findall(r"\d+|[+-]", problem)
    acc = int(parts[0])
    steps = []
    for op, x in zip(parts[1::2], parts[2::2]):
        new = acc + int(x) if op == "+" else acc - int(x)
        steps.append(f"{acc}{op}{x}={new}")
        acc = new
    return " ".join(steps)


TOOL_OUTPUT_TEMPLATE = "```output\n{output}\n```\n"  # as rlcore.config.ToolsConfig's default inserts it


def tool_completion(problem: str, answer: str) -> str:
    """A CoRT-style trajectory: compute with Python, read the interpreter, answer. The output
    block is what the interpreter would insert; SFT masks it out of the loss like RL does."""
    code = "```python\nprint(" + problem + ")\n```\n"
    return code + TOOL_OUTPUT_TEMPLATE.format(output=answer) + "\\boxed{" + answer + "}"


def format_answer(answer: str, answer_format: str = "boxed") -> str:
    if answer_format in ("boxed", "steps", "tool"):
        return "\\boxed{" + answer + "}"
    if answer_format == "plain":
        return answer
    raise ValueError(f"unknown answer_format {answer_format!r}")


def problem_space_size(cfg: ArithConfig | None = None) -> int:
    """Number of distinct problem strings ``cfg`` can produce."""
    cfg = cfg or ArithConfig()
    v, o = cfg.max_operand + 1, len(set(cfg.ops))
    return sum(v**k * o ** (k - 1) for k in range(cfg.min_operands, cfg.max_operands + 1))


def _evaluate(nums: list[int], ops: list[str]) -> int:
    acc = nums[0]
    for op, x in zip(ops, nums[1:]):
        acc = acc + x if op == "+" else acc - x
    return acc


def _sample(rng: random.Random, cfg: ArithConfig, k: int | None = None) -> tuple[str, str, int | str]:
    """(problem, answer, difficulty): the operand count, or "<count>x<bound>" with operand_ranges."""
    if k is None:
        k = rng.randint(cfg.min_operands, cfg.max_operands)
    bound = rng.choice(cfg.operand_ranges) if cfg.operand_ranges else cfg.max_operand
    nums = [rng.randint(0, bound) for _ in range(k)]
    ops = [rng.choice(cfg.ops) for _ in range(k - 1)]
    problem = str(nums[0]) + "".join(op + str(x) for op, x in zip(ops, nums[1:]))
    return problem, str(_evaluate(nums, ops)), (f"{k}x{bound}" if cfg.operand_ranges else k)


def _record(rid: str, problem: str, answer: str, difficulty: int | str, cfg: ArithConfig) -> dict:
    return {
        "id": rid,
        "prompt": format_prompt(problem, cfg),
        "answer": answer,
        "difficulty": difficulty,
        "metadata": {
            "task": "arith",
            "problem": problem,
            "difficulty": difficulty,
            "num_operands": problem.count("+") + problem.count("-") + 1,
            "answer_format": cfg.answer_format,
        },
    }


def generate_problems(n: int, seed: int, cfg: ArithConfig | None = None) -> list[dict]:
    """``n`` problems, deterministic for ``seed`` (uses its own ``random.Random``, never the
    global RNG). The number of operands is uniform in ``[min_operands, max_operands]``.
    Problems may repeat (the 2-operand space is small); see :func:`train_eval_split` for a
    held-out set."""
    cfg = cfg or ArithConfig()
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"arith-{seed}")
    out = []
    for i in range(n):
        problem, answer, k = _sample(rng, cfg)
        out.append(_record(f"arith-{seed}-{i:06d}", problem, answer, k, cfg))
    return out


def sft_completion(record: dict) -> str:
    """Target completion for SFT warm-up, e.g. ``"\\boxed{12}"`` (without eos: the trainer
    appends the tokenizer's eos)."""
    meta = record.get("metadata") or {}
    fmt = meta.get("answer_format", "boxed")
    if fmt == "steps":
        return worked_steps(meta["problem"]) + " " + format_answer(str(record["answer"]), fmt)
    if fmt == "tool":
        return tool_completion(meta["problem"], str(record["answer"]))
    return format_answer(str(record["answer"]), fmt)


SLIPS = ("unclosed", "unboxed", "last_operand")


def add_teacher_slips(records: list[dict], rate: float, seed: int, kind: str = "unclosed") -> int:
    """Give a share ``rate`` of the records a sloppy teacher's SFT demonstration. Returns how
    many were given one. Kinds:

    - ``unclosed``: the right answer in a box it forgets to close (``\\boxed{12``), which the
      verifier cannot read;
    - ``unboxed``: the right answer without the ``\\boxed{}`` the verifier reads (``12``), the
      inconsistent formatting of real SFT corpora;
    - ``last_operand``: an answer that forgets the last operand (``3+4+5=`` -> ``\\boxed{7}``).

    Imitation copies a slip into the policy, greedy decoding included; the verifier's reward is
    what removes it, so RL's effect is large and visible on any machine. The choice is per
    record and seeded (reruns and resumes see the same demonstrations); the record's ``answer``,
    the ground truth RL is scored on, is never touched.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"teacher slip rate must be in [0, 1), got {rate}")
    if kind not in SLIPS:
        raise ValueError(f"teacher slip must be one of {SLIPS}, got {kind!r}")
    rng = random.Random(f"arith-slips-{seed}")
    slipped = 0
    for rec in records:
        if rng.random() >= rate:
            continue
        meta = rec["metadata"]
        if kind == "unclosed":
            rec["sft_completion"] = sft_completion(rec).removesuffix("}")
        elif kind == "unboxed":
            rec["sft_completion"] = sft_completion(rec).replace("\\boxed{" + rec["answer"] + "}", rec["answer"])
        else:
            parts = re.findall(r"\d+|[+-]", meta["problem"])
            if len(parts) < 3:  # one operand: nothing to forget
                continue
            partial = str(_evaluate([int(x) for x in parts[:-2:2]], parts[1:-2:2]))
            rec["sft_completion"] = sft_completion(
                {**rec, "answer": partial, "metadata": {**meta, "problem": "".join(parts[:-2])}})
        meta["teacher_slip"] = kind
        slipped += 1
    return slipped


def train_eval_split(
    seed: int, n_train: int, n_eval: int, cfg: ArithConfig | None = None
) -> tuple[list[dict], list[dict]]:
    """A held-out split: ``n_eval`` *distinct* eval problems, and ``n_train`` train problems
    (repeats allowed) none of which appears in the eval set (compared by problem string).

    Eval problems are drawn first (uniform difficulty, then de-duplicated); train problems
    keep the uniform difficulty mix (operands re-drawn until the problem is not held out). Note: with the default config there are only 100 two-operand problems, so a
    200-problem eval set holds out roughly two thirds of them; the model has to generalise.
    """
    cfg = cfg or ArithConfig()
    if cfg.operand_ranges:
        raise ValueError("the disjoint split enumerates one operand bound; with operand_ranges use "
                         "arith_eval_split: iid or unseen")
    space = problem_space_size(cfg)
    if n_eval >= space:
        raise ValueError(f"n_eval={n_eval} leaves no training problems: only {space} distinct problems exist")

    rng = random.Random(f"arith-eval-{seed}")
    eval_recs: list[dict] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 1000 * max(n_eval, 1) + 10_000
    while len(eval_recs) < n_eval:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"could not draw {n_eval} distinct eval problems from config {asdict(cfg)}")
        problem, answer, k = _sample(rng, cfg)
        if problem in seen:
            continue
        seen.add(problem)
        eval_recs.append(_record(f"arith-eval-{seed}-{len(eval_recs):06d}", problem, answer, k, cfg))

    # Train: draw the difficulty first, then re-draw operands of that difficulty until the
    # problem is not held out, so train keeps the uniform difficulty mix. Difficulties whose
    # every problem is held out are excluded.
    rng = random.Random(f"arith-train-{seed}")
    o = len(set(cfg.ops))
    held = {k: 0 for k in range(cfg.min_operands, cfg.max_operands + 1)}
    for r in eval_recs:
        held[r["difficulty"]] += 1
    ks = [k for k, h in held.items() if h < (cfg.max_operand + 1) ** k * o ** (k - 1)]
    train_recs: list[dict] = []
    while len(train_recs) < n_train:
        k = rng.choice(ks)
        for _ in range(100_000):
            problem, answer, _k = _sample(rng, cfg, k)
            if problem not in seen:
                break
        else:  # pragma: no cover - only if almost every problem of size k is held out
            raise ValueError(f"could not draw a {k}-operand training problem outside the eval set")
        train_recs.append(_record(f"arith-train-{seed}-{len(train_recs):06d}", problem, answer, k, cfg))
    return train_recs, eval_recs
