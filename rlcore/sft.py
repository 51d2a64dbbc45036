"""Supervised warm-up on the learner group, so RL starts from a policy with some signal.

RAFT, CoRT and ReLIFT mix SFT and RL; here it is a stage that runs once before RL on the
task's reference completions, with the same FSDP learners and the same batch format.
"""
from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING

from rlcore.batch import build_batch
from rlcore.config import ExperimentConfig
from rlcore.data.source import PromptSource
from rlcore.data.arith import sft_completion
from rlcore.prompts import PromptRenderer
from rlcore.update import UpdateSettings

if TYPE_CHECKING:  # Ray-free import: GPU checks and probes use sft_target without Ray
    from rlcore.groups import LearnerGroup

# Interpreter output inside a reference trajectory: tokenized on its own and masked out of the
# loss, exactly as the tool rollout inserts and masks it during RL.
_OUTPUT_BLOCK = re.compile(r"(```output\n.*?\n```\n)", re.S)


def sft_target(renderer: PromptRenderer, record: dict) -> tuple[list[int], list[float]]:
    """Target ids (eos appended) and their loss mask."""
    text = record.get("sft_completion") or sft_completion(record)
    ids: list[int] = []
    mask: list[float] = []
    for k, piece in enumerate(_OUTPUT_BLOCK.split(text)):
        if piece:
            piece_ids = list(renderer.tok(piece, add_special_tokens=False)["input_ids"])
            ids += piece_ids
            mask += [0.0 if k % 2 else 1.0] * len(piece_ids)
    return ids + [renderer.eos_id], mask + [1.0]


def sft_lr(step: int, cfg: ExperimentConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    s = cfg.sft
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_sft(
    cfg: ExperimentConfig, learners: LearnerGroup, renderer: PromptRenderer, records: list[dict], pad_id: int, on_step=None
) -> dict:
    source = PromptSource(records, cfg.sft.batch_size, seed=cfg.seed + 7919, shuffle=True, drop_last=True)
    num_ranks = len(learners.workers)
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    for step in range(cfg.sft.steps):
        batch_records = source.next_batch()
        usable = len(batch_records) - len(batch_records) % num_ranks
        batch_records = batch_records[:usable]
        prompts = [renderer.ids(r) for r in batch_records]
        targets = [sft_target(renderer, r) for r in batch_records]
        batch = build_batch(prompts, [t[0] for t in targets], pad_id, response_masks=[t[1] for t in targets])
        metrics = learners.train(batch, "sft", UpdateSettings(lr=sft_lr(step, cfg)))
        if on_step is not None:
            on_step(step + 1, metrics)
    return {"sft/steps": cfg.sft.steps, "sft/time_s": time.perf_counter() - start,
            "sft/final_nll": metrics.get("train/nll", float("nan"))}
