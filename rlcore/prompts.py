"""Datasets from the config, and prompts rendered to token ids once, on the driver.

Rendering happens in one place so the rollout engine and the learner see identical prompt ids.
"""
from __future__ import annotations

from rlcore.config import DataConfig, ExperimentConfig
from rlcore.data.arith import ArithConfig, generate_problems, sft_completion, train_eval_split
from rlcore.data.loader import DataError, load_records


def load_datasets(cfg: ExperimentConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) records; errors name the file and line of a bad row."""
    d = cfg.data
    if d.task == "arith":
        arith = ArithConfig(
            min_operands=d.arith_min_operands,
            max_operands=d.arith_max_operands,
            max_operand=d.arith_max_operand,
            ops=d.arith_ops,
            answer_format=d.arith_answer_format,
        )
        if d.arith_eval_split == "disjoint":
            return train_eval_split(cfg.seed, d.n_train, d.n_eval, arith)
        train = generate_problems(d.n_train, cfg.seed, arith)
        seen = {r["metadata"]["problem"] for r in train}
        if d.arith_eval_split == "unseen":
            return train, _unseen_problems(d.n_eval, cfg.seed + 1, arith, seen)
        evals = generate_problems(d.n_eval, cfg.seed + 1, arith)
        for rec in evals:
            rec["metadata"]["in_train"] = rec["metadata"]["problem"] in seen
        return train, evals
    train = load_records(d.train_path, fields=d.fields or None)
    evals = load_records(d.eval_path, fields=d.fields or None) if d.eval_path else []
    for where, records in ((d.train_path, train), (d.eval_path, evals)):
        for i, rec in enumerate(records):
            if rec.get("answer") in (None, ""):
                raise DataError(f"{where}: record {i + 1} ({rec.get('id')}): empty 'answer' (ground truth)")
    return train, evals[: cfg.eval.num_prompts]


class PromptRenderer:
    """Chat-templated prompt ids for records, with the task's SFT target when it has one."""

    def __init__(self, tokenizer, data: DataConfig):
        self.tok = tokenizer
        self.data = data
        self.eos_id = tokenizer.eos_token_id

    def text(self, record: dict) -> str:
        messages = []
        if self.data.system_prompt:
            messages.append({"role": "system", "content": self.data.system_prompt})
        messages.append({"role": "user", "content": self.data.prompt_template.format(prompt=record["prompt"])})
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n".join(m["content"] for m in messages) + "\n"

    def ids(self, record: dict) -> list[int]:
        return list(self.tok(self.text(record), add_special_tokens=False)["input_ids"])

    def sft_target_ids(self, record: dict) -> list[int]:
        target = record.get("sft_completion") or sft_completion(record)
        return list(self.tok(target, add_special_tokens=False)["input_ids"]) + [self.eos_id]


def _unseen_problems(n: int, seed: int, arith: ArithConfig, seen: set[str]) -> list[dict]:
    """n distinct problems from the task distribution that never occur in training."""
    draws = generate_problems(50 * n, seed, arith)
    picked: dict[str, dict] = {}
    for rec in draws:
        problem = rec["metadata"]["problem"]
        if problem not in seen and problem not in picked:
            rec["metadata"]["in_train"] = False
            picked[problem] = rec
            if len(picked) == n:
                return list(picked.values())
    raise DataError(f"data.arith_eval_split=unseen: only {len(picked)} of the {n} eval problems asked for are "
                    "absent from the training set; lower data.n_train or data.n_eval, or widen the task")

