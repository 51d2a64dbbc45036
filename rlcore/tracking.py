"""Where metrics go: metrics.jsonl (source of truth), tensorboard, wandb, a rich progress bar."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from rlcore.config import TrackingConfig


class Tracker:
    def __init__(self, run_dir: Path, cfg: TrackingConfig, config_dict: dict, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            _truncate_after(self.metrics_path, resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self._tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                print("[rlcore] tensorboard not installed; skipping (pip install tensorboard)")
        self._wandb = None
        if cfg.wandb:
            import wandb

            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self._wandb = wandb.init(
                project=cfg.wandb_project, name=self.run_dir.name, config=config_dict,
                dir=str(self.run_dir), mode=mode, resume="allow",
            )

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    """A resumed run rewrites history from the checkpoint on; drop rows written after it."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plot_learning_curve(run_dir: Path) -> Path | None:
    """learning_curve.png: held-out accuracy and mean train reward against step."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(r["step"], r["reward/mean"]) for r in rows if r.get("reward/mean") is not None]
    evals = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
    if train:
        ax.plot(*zip(*train), label="train reward (mean)", alpha=0.6)
    unseen = [(r["step"], r["eval/accuracy_unseen"]) for r in rows if r.get("eval/accuracy_unseen") is not None]
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval accuracy (greedy)")
    if unseen:
        ax.plot(*zip(*unseen), marker=".", linestyle="--", label="eval accuracy, problems never trained on")
    sampled = [(r["step"], r["eval/accuracy_sampled"]) for r in rows if r.get("eval/accuracy_sampled") is not None]
    if sampled:
        ax.plot(*zip(*sampled), marker="s", linestyle=":", label="eval accuracy, sampled at train temperature")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(Path(run_dir).name)
    out = Path(run_dir) / "learning_curve.png"
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
