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
        rollout_logprobs=[[-0.1, -0.2], [-0.3, -0.4, -0.5]],
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8], [4, 5, 9, 10, 11]]
    # position t scores token t+1: row 0's generated tokens sit at 3, 4 -> positions 2, 3
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert batch["rollout_logp"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2])
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


# ------------------------------------------------------------------ durability and replace


def test_save_fsyncs_every_file_and_directory_before_the_rename(tmp_path, monkeypatch):
    import os

    events, paths = [], {}
    real_open, real_fsync, real_rename = os.open, os.fsync, os.rename

    def tracking_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        paths[fd] = os.path.realpath(path)
        return fd

    def tracking_fsync(fd):
        events.append(("fsync", paths.get(fd)))
        return real_fsync(fd)

    def tracking_rename(src, dst, *args, **kwargs):
        events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    monkeypatch.setattr(os, "rename", tracking_rename)

    def write(tmp):
        (tmp / "learner").mkdir(parents=True)
        (tmp / "learner" / "shard0").write_text("w")
        (tmp / "model.safetensors").write_text("m")

    final = ckpt.save_checkpoint(tmp_path, 1, {"step": 1}, write, keep_last=2)
    root = os.path.realpath(tmp_path / "checkpoints")
    tmp = os.path.join(root, ".tmp-step_1")
    rename = events.index(("rename", tmp, os.path.realpath(final)))
    synced = {p for kind, p in events[:rename] if kind == "fsync"}
    for name in ("learner/shard0", "model.safetensors", "trainer_state.json", "learner", ""):
        assert os.path.normpath(os.path.join(tmp, name)) in synced, name
    assert ("fsync", root) in events[rename + 1:]  # the rename itself made durable


def _states(path):
    return ckpt.load_trainer_state(path), (path / "w").read_text()


def test_resaving_a_step_replaces_it(tmp_path):
    ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "v": "a"}, _writer({"w": "a"}), keep_last=2)
    ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "v": "b"}, _writer({"w": "b"}), keep_last=2)
    (path,) = ckpt.list_checkpoints(tmp_path)
    assert path.name == "step_2" and _states(path) == ({"step": 2, "v": "b"}, "b")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]


def test_crash_while_resaving_a_step_keeps_a_complete_copy(tmp_path, monkeypatch):
    import os

    ckpt.save_checkpoint(tmp_path, 1, {"step": 1}, _writer({"w": "1"}), keep_last=3)
    ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "v": "a"}, _writer({"w": "a"}), keep_last=3)
    real_rename = os.rename

    def crash_on_rename_in(src, dst, *args, **kwargs):
        if os.path.basename(src) == ".tmp-step_2":
            raise KeyboardInterrupt("killed between moving the old copy aside and renaming the new one in")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", crash_on_rename_in)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "v": "b"}, _writer({"w": "b"}), keep_last=3)
    monkeypatch.setattr(os, "rename", real_rename)
    # a resume right after the crash still finds step 2 (the old, complete copy)
    latest = ckpt.resolve_checkpoint(tmp_path, "latest")
    assert _states(latest) == ({"step": 2, "v": "a"}, "a")
    assert ckpt.checkpoint_name(latest) == "step_2"
    assert _states(ckpt.resolve_checkpoint(tmp_path, "step_2"))[1] == "a"
    assert [ckpt.checkpoint_name(p) for p in ckpt.list_checkpoints(tmp_path)] == ["step_1", "step_2"]
    # the next save puts it back under its own name and drops the leftovers
    ckpt.save_checkpoint(tmp_path, 3, {"step": 3}, _writer({"w": "3"}), keep_last=3)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_1", "step_2", "step_3"]
    assert _states(tmp_path / "checkpoints" / "step_2")[1] == "a"


def test_crash_after_the_replace_before_cleanup(tmp_path, monkeypatch):
    import shutil

    ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "v": "a"}, _writer({"w": "a"}), keep_last=2)
    real_rmtree = shutil.rmtree

    def crash_on_old_copy(path, *args, **kwargs):
        if str(path).endswith(".old-step_2"):
            raise KeyboardInterrupt("killed before the old copy was deleted")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", crash_on_old_copy)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2, "v": "b"}, _writer({"w": "b"}), keep_last=2)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    (path,) = ckpt.list_checkpoints(tmp_path)  # the new copy wins; the old one is not listed twice
    assert path.name == "step_2" and _states(path)[1] == "b"
    ckpt.save_checkpoint(tmp_path, 3, {"step": 3}, _writer({"w": "3"}), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]


def test_crash_while_pruning_never_lists_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    import shutil

    ckpt.save_checkpoint(tmp_path, 1, {"step": 1}, _writer({"w": "1", "v": "1"}), keep_last=1)
    real_rmtree = shutil.rmtree

    def crash_mid_delete(path, *args, **kwargs):
        if not (path / "w").is_file():
            return real_rmtree(path, *args, **kwargs)
        (path / "w").unlink()  # part of the directory is gone...
        raise KeyboardInterrupt("...when the process dies")

    monkeypatch.setattr(shutil, "rmtree", crash_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2}, _writer({"w": "2", "v": "2"}), keep_last=1)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    for path in ckpt.list_checkpoints(tmp_path):
        assert (path / "w").is_file(), f"{path} is listed but half deleted"
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "step_2"


def test_pruning_keeps_the_checkpoint_just_written(tmp_path):
    # resumed from step_2 while a later step_5 exists: the new step_3 must survive keep_last=1
    for step in (2, 5):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, _writer({"w": str(step)}), keep_last=3)
    ckpt.save_checkpoint(tmp_path, 3, {"step": 3}, _writer({"w": "3"}), keep_last=1)
    assert (tmp_path / "checkpoints" / "step_3" / "trainer_state.json").is_file()


# ------------------------------------------------------------------ when to save


def test_checkpoint_due_by_steps_or_minutes():
    assert ckpt.checkpoint_due(50, 50, 0, 0.0)
    assert not ckpt.checkpoint_due(49, 50, 0, 10 * 3600.0)
    assert ckpt.checkpoint_due(7, 50, 30, 30 * 60.0)
    assert not ckpt.checkpoint_due(7, 50, 30, 29 * 60.0)
    assert ckpt.checkpoint_due(7, 0, 1, 61.0)
    assert not ckpt.checkpoint_due(7, 0, 0, 1e9)  # both off: only the end-of-run save


def test_default_config_bounds_what_a_crash_loses():
    from rlcore.config import ExperimentConfig

    trainer = ExperimentConfig().trainer
    assert 0 < trainer.checkpoint_every <= trainer.total_steps
    assert 0 < trainer.checkpoint_every_minutes <= 60


# ------------------------------------------------------------------ resume compatibility


def _cfg(**overrides):
    from rlcore.config import load_config

    settings = {"model.path": "artifacts/tiny", "model.build_tiny": "true", **overrides}
    return load_config(None, [f"{k}={v}" for k, v in settings.items()])


def _save_with(tmp_path, cfg, step=1, critic=False):
    def write(tmp):
        tmp.mkdir(parents=True)
        if critic:
            (tmp / "critic").mkdir()

    return ckpt.save_checkpoint(tmp_path, step, {"step": step}, write, keep_last=5, config=cfg.to_dict())


def test_checkpoint_stores_its_config(tmp_path):
    import yaml

    from rlcore.config import save_config

    path = _save_with(tmp_path, _cfg(**{"learner.lr": 0.5}))
    assert yaml.safe_load((path / "config.yaml").read_text())["learner"]["lr"] == 0.5
    # without config=, the run directory's config.yaml is what the checkpoint keeps
    save_config(_cfg(seed=7), tmp_path / "config.yaml")
    path = ckpt.save_checkpoint(tmp_path, 2, {"step": 2}, _writer({}), keep_last=5)
    assert yaml.safe_load((path / "config.yaml").read_text())["seed"] == 7


def test_resume_allows_settings_that_do_not_change_the_state(tmp_path):
    path = _save_with(tmp_path, _cfg())
    ckpt.check_resume_compatible(path, _cfg(**{
        "trainer.total_steps": 500, "eval.every": 3, "eval.num_prompts": 17, "tracking.tensorboard": "false",
        "learner.lr": 3e-5, "trainer.checkpoint_every": 7, "rollout.num_workers": 2, "reward.num_workers": 4,
        "name": "elsewhere", "resume": "latest", "model.path": "./artifacts/tiny", "model.dtype": "bfloat16",
    }))


@pytest.mark.parametrize("key, value", [
    ("model.path", "other/model"), ("algorithm.name", "drgrpo"), ("learner.num_ranks", 2),
    ("rollout.max_staleness", 1), ("rollout.prompts_per_step", 8), ("rollout.n_samples", 4),
    ("allocation.name", "gvm"), ("seed", 3), ("data.n_train", 123), ("data.arith_ops", "+-"),
])
def test_resume_refuses_a_changed_key_and_names_it(tmp_path, key, value):
    path = _save_with(tmp_path, _cfg())
    with pytest.raises(ckpt.IncompatibleCheckpointError, match=key.replace(".", r"\.")) as info:
        ckpt.check_resume_compatible(path, _cfg(**{key: value}))
    assert "in the checkpoint" in str(info.value)


def test_resume_error_names_every_differing_key_and_is_a_config_error(tmp_path):
    from rlcore.config import ConfigError

    path = _save_with(tmp_path, _cfg())
    with pytest.raises(ConfigError) as info:
        ckpt.check_resume_compatible(path, _cfg(**{"learner.num_ranks": 4, "rollout.max_staleness": 2,
                                                   "trainer.total_steps": 9}))
    message = str(info.value)
    assert "learner.num_ranks: 1 in the checkpoint, 4 now" in message and "rollout.max_staleness" in message
    assert "total_steps" not in message and "resharding" in message


def test_resume_checks_critic_ranks_only_when_the_checkpoint_has_a_critic(tmp_path):
    without = _save_with(tmp_path, _cfg(), step=1)
    ckpt.check_resume_compatible(without, _cfg(**{"critic.num_ranks": 2}))
    with_critic = _save_with(tmp_path, _cfg(), step=2, critic=True)
    with pytest.raises(ckpt.IncompatibleCheckpointError, match=r"critic\.num_ranks"):
        ckpt.check_resume_compatible(with_critic, _cfg(**{"critic.num_ranks": 2}))


def test_resume_eval_size_matters_only_for_a_disjoint_arith_split(tmp_path):
    path = _save_with(tmp_path, _cfg(**{"data.arith_eval_split": "iid"}), step=1)
    ckpt.check_resume_compatible(path, _cfg(**{"data.arith_eval_split": "iid", "data.n_eval": 50}))
    path = _save_with(tmp_path, _cfg(**{"data.arith_eval_split": "disjoint"}), step=2)
    with pytest.raises(ckpt.IncompatibleCheckpointError, match=r"data\.n_eval"):
        ckpt.check_resume_compatible(path, _cfg(**{"data.arith_eval_split": "disjoint", "data.n_eval": 50}))


def test_resume_falls_back_to_the_run_config_and_skips_unknown_keys(tmp_path):
    import yaml

    from rlcore.config import save_config

    path = ckpt.save_checkpoint(tmp_path, 1, {"step": 1}, _writer({}), keep_last=5)  # no config anywhere
    assert not (path / "config.yaml").exists()
    ckpt.check_resume_compatible(path, _cfg(**{"learner.num_ranks": 4}), tmp_path)  # nothing to compare
    save_config(_cfg(), tmp_path / "config.yaml")  # an older checkpoint: the run's config is the reference
    with pytest.raises(ckpt.IncompatibleCheckpointError, match=r"learner\.num_ranks"):
        ckpt.check_resume_compatible(path, _cfg(**{"learner.num_ranks": 4}), tmp_path)
    old = _cfg().to_dict()
    del old["rollout"]["max_staleness"]  # written before the key existed
    (path / "config.yaml").write_text(yaml.safe_dump(old))
    ckpt.check_resume_compatible(path, _cfg(**{"rollout.max_staleness": 1}), tmp_path)


def test_every_must_match_key_exists_in_the_config():
    from rlcore.config import ExperimentConfig

    current = ExperimentConfig().to_dict()
    rules = {**ckpt.RESUME_MUST_MATCH, **ckpt._CRITIC_MUST_MATCH, **ckpt._DISJOINT_MUST_MATCH}
    for key in rules:
        assert ckpt._lookup(current, key)[0], key
