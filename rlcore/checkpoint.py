"""Run checkpoints: written to a temporary directory, made durable, renamed into place, last K kept.

A checkpoint is `checkpoints/step_N/` with `learner/` (DCP shards: model + optimizer),
`model/` (a plain HF model directory, loadable by vLLM or `from_pretrained`),
`trainer_state.json` (step, data cursor, RNG states, counters) and `config.yaml` (the config
that wrote it, which a resume is checked against: `check_resume_compatible`).

Crash safety: every file and directory of `.tmp-step_N` is fsynced before it is renamed to
`step_N` (and the parent directory after), so a power loss never leaves a `step_N` whose
contents were not on disk. Re-saving a step that exists (the end-of-run save after a periodic
save at the same step) moves the old directory aside to `.old-step_N`, renames the new one in,
then deletes the old one: at every instant one complete copy exists under a name this module
reads (`list_checkpoints` treats `.old-step_N` as `step_N` while `step_N` is missing, and the
next save puts it back). Pruned checkpoints are renamed to `.del-step_N` before deletion, so a
half-deleted directory is never listed. Leftover `.tmp-`/`.old-`/`.del-` directories are
cleaned on the next save.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rlcore.config import ConfigError

STEP_RE = re.compile(r"^step_(\d+)$")
ASIDE_RE = re.compile(r"^\.old-step_(\d+)$")  # a replaced checkpoint, between the two renames
CONFIG_FILE = "config.yaml"


def _step_of(path: Path) -> int:
    match = STEP_RE.match(path.name) or ASIDE_RE.match(path.name)
    return int(match.group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Read-only: safe to call while another process saves.

    A `.old-step_N` stands in for `step_N` when a crash between the two renames of a replace
    left no complete `step_N` (the next `save_checkpoint` renames it back)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    complete = {p for p in root.iterdir() if (p / "trainer_state.json").is_file()}
    found = {int(STEP_RE.match(p.name).group(1)): p for p in complete if STEP_RE.match(p.name)}
    for p in complete:
        aside = ASIDE_RE.match(p.name)
        if aside:
            found.setdefault(int(aside.group(1)), p)
    return [found[step] for step in sorted(found)]


def checkpoint_name(path: Path) -> str:
    """`step_N` for a checkpoint directory (also for a `.old-step_N` that stands in for it)."""
    return f"step_{_step_of(Path(path))}"


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """`latest` or `step_N` -> directory; a clear error when it does not exist."""
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no complete checkpoint to resume from")
    if which == "latest":
        return found[-1]
    for path in found:
        if checkpoint_name(path) == which:
            return path
    raise FileNotFoundError(f"{run_dir}/checkpoints/{which} not found; have {[checkpoint_name(p) for p in found]}")


def save_checkpoint(run_dir: Path, step: int, trainer_state: dict, write_workers: Callable[[Path], None],
                    keep_last: int, config: dict | None = None) -> Path:
    """Write `checkpoints/step_{step}` crash-safely; keep the newest `keep_last` (and this one).

    `write_workers(tmp)` writes the workers' files under `tmp`. `config` (the run's config as a
    dict) is stored as `config.yaml`; without it the run directory's `config.yaml` is copied.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _repair(root)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    write_workers(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    _write_config(tmp / CONFIG_FILE, config, Path(run_dir) / CONFIG_FILE)
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))  # last: marks the directory complete
    _fsync_tree(tmp)
    if final.exists():
        aside = root / f".old-step_{step}"
        final.rename(aside)
        _fsync_dir(root)
        tmp.rename(final)  # a crash before this line leaves `aside`, listed and restored as step_N
        _fsync_dir(root)
        shutil.rmtree(aside, ignore_errors=True)  # what is left is cleaned by the next save
    else:
        tmp.rename(final)
        _fsync_dir(root)
    found = list_checkpoints(run_dir)
    keep = set(found[-keep_last:]) if keep_last > 0 else set(found)
    for old in found:
        if old not in keep and old != final:
            trash = root / f".del-{checkpoint_name(old)}"
            shutil.rmtree(trash, ignore_errors=True)
            old.rename(trash)  # atomic: a crash mid-delete never leaves a listed, half-deleted step
            _fsync_dir(root)
            shutil.rmtree(trash, ignore_errors=True)
    return final


def _repair(root: Path) -> None:
    """Undo or finish what a crash interrupted, and drop temporaries (before a new save)."""
    for aside in root.glob(".old-step_*"):
        if not ASIDE_RE.match(aside.name):
            continue
        final = root / f"step_{_step_of(aside)}"
        if (final / "trainer_state.json").is_file() or not (aside / "trainer_state.json").is_file():
            shutil.rmtree(aside, ignore_errors=True)  # the replace had finished (or the copy is junk)
        else:  # crashed between the two renames: the old copy is the checkpoint
            if final.exists():
                shutil.rmtree(final)
            aside.rename(final)
            _fsync_dir(root)
    for stale in (*root.glob(".tmp-step_*"), *root.glob(".del-step_*")):
        shutil.rmtree(stale, ignore_errors=True)


def _write_config(path: Path, config: dict | None, run_config: Path) -> None:
    if config is not None:
        import yaml

        path.write_text(yaml.safe_dump(config, sort_keys=False))
    elif run_config.is_file():
        shutil.copyfile(run_config, path)


def _fsync_tree(top: Path) -> None:
    """fsync every file, then every directory bottom-up, so the tree is on disk before the rename."""
    for dirpath, _dirs, files in os.walk(top, topdown=False):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                _fsync_file(path)
        _fsync_dir(dirpath)


def _fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | Path) -> None:
    """Make a directory's entries (renames, new files) durable. No-op where directories cannot be
    opened or fsynced (Windows, some network filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        if os.name == "nt":
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


ROLLOUTS_AHEAD = "rollouts_ahead.pkl"


def save_rollouts_ahead(path: Path, rollouts: list) -> None:
    """Batches an asynchronous run generated for steps after this checkpoint (rlcore/rollout_pipeline.py).

    They were sampled by an older policy than the one saved here, so a resume could not make
    them again: it trains on these, exactly as the uninterrupted run does.
    """
    if rollouts:
        import pickle

        with (Path(path) / ROLLOUTS_AHEAD).open("wb") as f:
            pickle.dump(rollouts, f)


def load_rollouts_ahead(path: Path) -> list:
    file = Path(path) / ROLLOUTS_AHEAD
    if not file.is_file():
        return []
    import pickle

    with file.open("rb") as f:
        return pickle.load(f)


def load_trainer_state(path: Path) -> dict:
    return json.loads((Path(path) / "trainer_state.json").read_text())


def capture_rng() -> dict:
    """Driver RNG states as JSON-able data (numpy/torch states as lists)."""
    np_state = np.random.get_state()
    return {
        "python": _to_json(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _to_json(obj):
    return [_to_json(x) for x in obj] if isinstance(obj, (tuple, list)) else obj


def _to_tuple(obj):
    return tuple(_to_tuple(x) for x in obj) if isinstance(obj, list) else obj


# ------------------------------------------------------------------- when to save


def checkpoint_due(step: int, every_steps: int, every_minutes: float, seconds_since_save: float) -> bool:
    """A periodic save is due after `step`: every `every_steps` steps, or once `every_minutes`
    have passed since the last save (or the run's start); 0 turns either rule off."""
    if every_steps > 0 and step % every_steps == 0:
        return True
    return every_minutes > 0 and seconds_since_save >= every_minutes * 60.0


# ------------------------------------------------------------ resume compatibility

# Config keys whose change makes a checkpoint's state mean something else, so a resume that
# changes them is refused (key -> why). Anything not listed may change on resume: total_steps,
# lr and other hyper-parameters, eval, logging, reward, worker counts and placement, ...
RESUME_MUST_MATCH: dict[str, str] = {
    "seed": "the training set (data.task=arith), data order and sample seeds derive from it",
    "model.path": "the checkpoint holds this model's weights and optimizer state",
    "model.source": "the checkpoint holds this model's weights and optimizer state",
    "algorithm.name": "the algorithm decides what the checkpoint holds (critic shards, reference model) "
                      "and what the optimizer state was accumulated for",
    "learner.num_ranks": "the DCP shards were written by that many ranks; loading them onto another "
                         "number of ranks (resharding) is not supported",
    "rollout.max_staleness": "the batches generated ahead (rollouts_ahead.pkl) were made for that many "
                             "steps of staleness",
    "rollout.prompts_per_step": "the data cursor counts batches of this many prompts",
    "rollout.n_samples": "the batch shape and the allocator's budget",
    "allocation.name": "the allocator's saved statistics are in its own format",
    "data.task": "the data cursor indexes the training set",
    "data.train_path": "the data cursor indexes the training set",
    "data.train_split": "the data cursor indexes the training set",
    "data.hf_config": "the data cursor indexes the training set",
    "data.fields": "the data cursor indexes the training set",
    "data.n_train": "the data cursor indexes the training set",
    "data.arith_min_operands": "the synthetic training set is generated from it",
    "data.arith_max_operands": "the synthetic training set is generated from it",
    "data.arith_max_operand": "the synthetic training set is generated from it",
    "data.arith_ops": "the synthetic training set is generated from it",
    "data.arith_eval_split": "the synthetic training set is generated from it",
}
_CRITIC_MUST_MATCH = {"critic.num_ranks": "the critic's DCP shards were written by that many ranks"}
_DISJOINT_MUST_MATCH = {"data.n_eval": "with data.arith_eval_split=disjoint the eval set is cut out of the "
                                       "problem space, so its size changes the training set"}


class IncompatibleCheckpointError(ConfigError):
    """Resuming would load a checkpoint under a config that changes what its state means
    (a ConfigError: `rlcore train` reports it like any other config mistake, before workers start)."""


def resume_incompatibilities(saved: dict, current: dict, has_critic: bool = False) -> list[tuple[str, Any, Any, str]]:
    """(key, saved value, current value, why) for every RESUME_MUST_MATCH key that differs.

    Keys missing from `saved` (a config written before the key existed) are not compared.
    `has_critic`: the checkpoint holds critic shards (their rank count must match too)."""
    rules = dict(RESUME_MUST_MATCH)
    if has_critic:
        rules.update(_CRITIC_MUST_MATCH)
    data = saved.get("data") or {}
    if data.get("task") == "arith" and data.get("arith_eval_split") == "disjoint":
        rules.update(_DISJOINT_MUST_MATCH)
    out = []
    for key, why in rules.items():
        found, old = _lookup(saved, key)
        if not found:
            continue
        _, new = _lookup(current, key)
        if _normalise(old, key) != _normalise(new, key):
            out.append((key, old, new, why))
    return out


def check_resume_compatible(path: Path, cfg, run_dir: Path | None = None) -> None:
    """Refuse (IncompatibleCheckpointError naming the keys) to resume `path` under `cfg` when the
    config that wrote it differs in a key that changes what its state means.

    The config is read from the checkpoint's `config.yaml`; a checkpoint written before it was
    stored there falls back to `run_dir/config.yaml` (the run's last config; read it before a new
    run overwrites it). With neither, there is nothing to compare and nothing is checked."""
    import yaml

    path = Path(path)
    source = path / CONFIG_FILE
    if not source.is_file() and run_dir is not None:
        source = Path(run_dir) / CONFIG_FILE
    if not source.is_file():
        return
    saved = yaml.safe_load(source.read_text()) or {}
    current = cfg if isinstance(cfg, dict) else cfg.to_dict()
    diffs = resume_incompatibilities(saved, current, has_critic=(path / "critic").is_dir())
    if diffs:
        lines = "\n".join(f"  {key}: {old!r} in the checkpoint, {new!r} now ({why})" for key, old, new, why in diffs)
        raise IncompatibleCheckpointError(
            f"cannot resume from {path}: its config ({source}) differs in keys that change what the "
            f"checkpoint's state means:\n{lines}\nResume with the checkpoint's values, or start a new run "
            f"(another name=..., or overwrite=true)."
        )


def _lookup(tree: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _normalise(value: Any, key: str = "") -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, str) and key.endswith("path") and value:
        return os.path.normpath(value)  # "./artifacts/tiny" is "artifacts/tiny"
    return value
