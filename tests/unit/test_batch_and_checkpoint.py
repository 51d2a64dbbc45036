"""Batch layout (which positions are trained) and checkpoint atomicity / RNG capture."""
import json
import random

import numpy as np
import pytest
import torch

from rlcore import checkpoint as ckpt
from rlcore.batch import build_batch, shard_batch


def test_loss_mask_marks_exactly_the_generated_tokens():
    batch = build_batch(
        [[1, 2, 3], [4, 5]], [[7, 8], [9, 10, 11]], pad_id=0,
        rollout_logprobs=[[-0.1, -0.2], [-0.3, -0.4, -0.5]], advantages=np.array([1.5, -2.0]),
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 5, 9, 10, 11]]
    # position t scores token t+1: row 0's generated tokens sit at 3, 4 -> positions 2, 3
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert batch["rollout_logp"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2])
    assert batch["advantages"][1].tolist() == pytest.approx([0, -2.0, -2.0, -2.0])
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 5]


def test_response_masks_exclude_tool_output_tokens():
    batch = build_batch([[1, 2]], [[5, 6, 7, 8]], pad_id=0, response_masks=[[1, 0, 0, 1]])
    assert batch["loss_mask"].tolist() == [[0, 1, 0, 0, 1]]


def test_shards_are_equal_and_refuse_uneven_splits():
    batch = build_batch([[1]] * 4, [[2, 3]] * 4, pad_id=0)
    shards = shard_batch(batch, 2)
    assert [len(s["input_ids"]) for s in shards] == [2, 2]
    with pytest.raises(ValueError, match="equal shards"):
        shard_batch(batch, 3)


def _writer(files: dict):
    def write(tmp):
        tmp.mkdir(parents=True)
        for name, text in files.items():
            (tmp / name).write_text(text)
    return write


def test_checkpoint_rename_into_place_and_keep_last(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, _writer({"w": str(step)}), keep_last=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_2", "step_3"]
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "step_3"
    assert ckpt.load_trainer_state(ckpt.resolve_checkpoint(tmp_path, "step_2"))["step"] == 2
    with pytest.raises(FileNotFoundError, match="step_1"):
        ckpt.resolve_checkpoint(tmp_path, "step_1")


def test_crash_mid_save_leaves_previous_checkpoint_usable(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1}, _writer({"w": "1"}), keep_last=2)

    def crash(tmp):
        tmp.mkdir(parents=True)
        (tmp / "w").write_text("partial")
        raise KeyboardInterrupt("killed mid-save")

    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2}, crash, keep_last=2)
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "step_1"
    # the next save cleans the leftover temporary directory
    ckpt.save_checkpoint(tmp_path, 3, {"step": 3}, _writer({"w": "3"}), keep_last=2)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(ckpt.capture_rng()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
