"""Run checkpoints: written to a temporary directory and renamed into place, last K kept.

A checkpoint is `checkpoints/step_N/` with `learner/` (DCP shards: model + optimizer),
`model/` (a plain HF model directory, loadable by vLLM or `from_pretrained`) and
`trainer_state.json` (step, data cursor, RNG states, counters). A crash mid-save leaves
only a `.tmp-step_N` directory behind, which is ignored and cleaned on the next save.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

STEP_RE = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_RE.match(p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """`latest` or `step_N` -> directory; a clear error when it does not exist."""
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no complete checkpoint to resume from")
    if which == "latest":
        return found[-1]
    for path in found:
        if path.name == which:
            return path
    raise FileNotFoundError(f"{run_dir}/checkpoints/{which} not found; have {[p.name for p in found]}")


def save_checkpoint(run_dir: Path, step: int, trainer_state: dict, write_workers: Callable[[Path], None], keep_last: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    write_workers(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
