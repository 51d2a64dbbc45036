"""Datasets from the config, and prompts rendered to token ids once, on the driver.

Rendering happens in one place so the rollout engine and the learner see identical prompt ids.
"""
from __future__ import annotations

from pathlib import Path

from rlcore.config import DataConfig, ExperimentConfig
from rlcore.data.arith import ArithConfig, add_teacher_slips, generate_problems, sft_completion, train_eval_split
from rlcore.data.loader import DataError, load_hf_dataset, load_records


def load_datasets(cfg: ExperimentConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) records; errors name the file and line of a bad row."""
    d = cfg.data
    if d.task == "arith":
        arith = ArithConfig(
            min_operands=d.arith_min_operands,
            max_operands=d.arith_max_operands,
            max_operand=d.arith_max_operand,
            operand_ranges=tuple(d.arith_operand_ranges),
            ops=d.arith_ops,
            answer_format=d.arith_answer_format,
            prompt_template=d.arith_prompt_template,
        )
        if d.arith_eval_split == "disjoint":
            train, evals = train_eval_split(cfg.seed, d.n_train, d.n_eval, arith)
            for rec in evals:  # held out by construction: eval/accuracy_unseen covers all of them
                rec["metadata"]["in_train"] = False
            add_teacher_slips(train, d.arith_teacher_slip_rate, cfg.seed, d.arith_teacher_slip)
            return train, evals
        train = generate_problems(d.n_train, cfg.seed, arith)
        add_teacher_slips(train, d.arith_teacher_slip_rate, cfg.seed, d.arith_teacher_slip)
        seen = {r["metadata"]["problem"] for r in train}
        if d.arith_eval_split == "unseen":
            return train, _unseen_problems(d.n_eval, cfg.seed + 1, arith, seen)
        evals = generate_problems(d.n_eval, cfg.seed + 1, arith)
        for rec in evals:
            rec["metadata"]["in_train"] = rec["metadata"]["problem"] in seen
        return train, evals
    if not d.train_path:
        raise DataError(f"data.train_path: required when data.task is {d.task!r}")
    train = _load(d, d.train_path, d.train_split)
    evals = _load(d, d.eval_path, d.eval_split) if d.eval_path else []
    for where, records in ((d.train_path, train), (d.eval_path, evals)):
        for i, rec in enumerate(records):
            if rec.get("answer") in (None, ""):
                raise DataError(f"{where}: record {i + 1} ({rec.get('id')}): empty 'answer' (ground truth)")
    return train, evals[: cfg.eval.num_prompts]


def _load(d: DataConfig, path: str, split: str) -> list[dict]:
    """task=hf: hub id or local dataset dir; task=file: a file, or a directory holding the split."""
    fields = d.fields or None
    if d.task == "hf":
        return load_hf_dataset(path, split=split, fields=fields, config_name=d.hf_config or None)
    return load_records(path, fields=fields, split=split if Path(path).is_dir() else None)


def user_message(data: DataConfig, record: dict) -> str:
    """The user turn: ``prompt_template`` filled with the record's prompt and the instruction.

    The answer-format instruction goes where the template says ``{instruction}``, otherwise after
    the message and a blank line, so one instruction works with any template.
    """
    instruction = getattr(data, "instruction", "") or ""
    text = data.prompt_template.format(prompt=record["prompt"], instruction=instruction)
    if instruction and "{instruction}" not in data.prompt_template:
        text = f"{text}\n\n{instruction}"
    return text


class PromptRenderer:
    """Chat-templated prompt ids for records, with the task's SFT target when it has one."""

    def __init__(self, tokenizer, data: DataConfig):
        self.tok = tokenizer
        self.data = data
        self.eos_id = tokenizer.eos_token_id
        self.template = _chat_template(tokenizer, getattr(data, "chat_template", "auto") or "auto")

    def text(self, record: dict) -> str:
        messages = []
        if self.data.system_prompt:
            messages.append({"role": "system", "content": self.data.system_prompt})
        messages.append({"role": "user", "content": user_message(self.data, record)})
        if self.template is not None:
            extra = {} if self.template is _OWN else {"chat_template": self.template}
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        return "\n".join(m["content"] for m in messages) + "\n"

    def ids(self, record: dict) -> list[int]:
        return list(self.tok(self.text(record), add_special_tokens=False)["input_ids"])

    def sft_target_ids(self, record: dict) -> list[int]:
        target = record.get("sft_completion") or sft_completion(record)
        return list(self.tok(target, add_special_tokens=False)["input_ids"]) + [self.eos_id]


_OWN = object()  # marker: use the tokenizer's own chat template


def _chat_template(tokenizer, spec: str):
    """``auto``: the tokenizer's template (plain text without one); ``none``: plain text; else a
    Jinja file. Base models are often evaluated without a chat template, hence ``none``."""
    if spec == "auto":
        return _OWN if getattr(tokenizer, "chat_template", None) else None
    if spec == "none":
        return None
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"data.chat_template: {spec!r} is not 'auto', 'none' or a Jinja template file")
    return path.read_text()


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

