"""Terminal progress: a rich bar with live reward and accuracy (plain lines when not a TTY)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = Console()
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=not enabled, transient=False,
        )
        self._sft = self._rl = None
        self._last_eval = "-"

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def note(self, text: str) -> None:
        self.console.print(f"[rlcore] {text}")

    def start_sft(self, steps: int) -> None:
        self._sft = self._bar.add_task("SFT warm-up", total=steps, info="")

    def sft_step(self, step: int, metrics: dict) -> None:
        info = f"nll {metrics.get('train/nll', float('nan')):.3f}"
        self._bar.update(self._sft, completed=step, info=info)
        self._plain(f"sft step {step}: {info}", step % 50 == 0)

    def start_rl(self, total: int, done: int) -> None:
        self._rl = self._bar.add_task("RL", total=total, completed=done, info="")

    def eval_done(self, step: int, accuracy: float) -> None:
        self._last_eval = f"{accuracy:.3f}"
        self.console.print(f"[rlcore] eval @ step {step}: accuracy {accuracy:.3f}", highlight=False)

    def step_done(self, step: int, metrics: dict) -> None:
        if self._rl is None or "reward/mean" not in metrics:  # an eval-only row
            return
        info = (
            f"reward {metrics.get('reward/mean', float('nan')):.3f}  acc {metrics.get('reward/accuracy', float('nan')):.3f}"
            f"  eval {self._last_eval}  {metrics.get('time/step_s', 0):.2f}s/step"
        )
        self._bar.update(self._rl, completed=step, info=info)
        self._plain(f"step {step}: {info}", True)

    def _plain(self, line: str, due: bool) -> None:
        """Logs and CI are not terminals: a live bar never renders there, so print lines."""
        if self.enabled and due and not self.console.is_terminal:
            self.console.print(f"[rlcore] {line}", highlight=False)

    def summary(self, summary: dict) -> None:
        table = Table(title="run summary")
        table.add_column("metric")
        table.add_column("value")
        for key, value in summary.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        self.console.print(table)
