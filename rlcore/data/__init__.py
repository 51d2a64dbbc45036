"""Prompt data: synthetic arithmetic task, file loaders and a resumable batch source."""

from rlcore.data.arith import (
    ArithConfig,
    format_prompt,
    generate_problems,
    sft_completion,
    train_eval_split,
)
from rlcore.data.loader import DataError, load_records, write_jsonl
from rlcore.data.source import PromptSource

__all__ = [
    "ArithConfig",
    "format_prompt",
    "generate_problems",
    "sft_completion",
    "train_eval_split",
    "DataError",
    "load_records",
    "write_jsonl",
    "PromptSource",
]
