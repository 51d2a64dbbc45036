"""Progress: a live rich bar on a terminal; plain, whole lines everywhere else.

A log file, a pipe (`| tee`, `| cat`) or CI is not a terminal: a live bar never refreshes there and
its one final render is squeezed into 80 columns (`SFT warm-up ━━━━ 220… nll 0.281  0:0…`). There
every line is written whole (no wrapping, no truncation): a line every few steps of each phase
with all the fields, one at each evaluation, and the summary as `key: value` lines.
"""
from __future__ import annotations

import math
import time
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table


class Progress:
    def __init__(self, enabled: bool = True, file: IO[str] | None = None, sft_lines: int = 10, rl_lines: int = 100):
        """`file`: where to write (default stdout). Off-terminal, about `sft_lines` lines cover
        the SFT warm-up and at most `rl_lines` the RL steps (every step when there are fewer)."""
        self.enabled = enabled
        self.console = Console(file=file)
        self.live = enabled and self.console.is_terminal
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, disable=not self.live, transient=False,
        )
        self._sft_lines, self._rl_lines = max(1, sft_lines), max(1, rl_lines)
        self._sft = self._rl = None
        self._phase: dict[str, dict] = {}
        self._last_eval = "-"

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    # ------------------------------------------------------------------ output

    def _line(self, text: str) -> None:
        """One whole line: above the bar on a terminal, written as is anywhere else."""
        if self.console.is_terminal:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            out = self.console.file
            out.write(text + "\n")
            out.flush()

    def note(self, text: str) -> None:
        self._line(f"[rlcore] {text}")

    # ------------------------------------------------------------------ phases

    def _start(self, key: str, total: int, done: int, lines: int) -> None:
        self._phase[key] = {
            "total": total, "done0": done, "t0": time.perf_counter(),
            "every": max(1, math.ceil(max(total - done, 1) / lines)),
        }

    def _plain(self, key: str, label: str, step: int, info: str) -> None:
        """The off-terminal line of a phase: every `every` steps and at the last one."""
        phase = self._phase.get(key)
        if self.live or not self.enabled or phase is None:
            return
        total = phase["total"]
        if step % phase["every"] and step != total:
            return
        elapsed = time.perf_counter() - phase["t0"]
        done = step - phase["done0"]
        eta = elapsed / done * max(total - step, 0) if done > 0 else float("nan")
        self._line(f"[rlcore] {label} {step}/{total}  {info}  elapsed {_clock(elapsed)}  eta {_clock(eta)}")

    def start_sft(self, steps: int) -> None:
        self._sft = self._bar.add_task("SFT warm-up", total=steps, info="")
        self._start("sft", steps, 0, self._sft_lines)

    def sft_step(self, step: int, metrics: dict) -> None:
        info = f"nll {metrics.get('train/nll', float('nan')):.3f}"
        self._bar.update(self._sft, completed=step, info=info)
        self._plain("sft", "SFT warm-up step", step, info)

    def start_rl(self, total: int, done: int) -> None:
        self._rl = self._bar.add_task("RL", total=total, completed=done, info="")
        self._start("rl", total, done, self._rl_lines)

    def eval_done(self, step: int, accuracy: float) -> None:
        self._last_eval = f"{accuracy:.3f}"
        self._line(f"[rlcore] eval @ step {step}: accuracy {accuracy:.3f}")

    def step_done(self, step: int, metrics: dict) -> None:
        if self._rl is None or "reward/mean" not in metrics:  # an eval-only row
            return
        info = (
            f"reward {metrics.get('reward/mean', float('nan')):.3f}  acc {metrics.get('reward/accuracy', float('nan')):.3f}"
            f"  eval {self._last_eval}  {metrics.get('time/step_s', 0):.2f}s/step"
        )
        self._bar.update(self._rl, completed=step, info=info)
        self._plain("rl", "RL step", step, info)

    def summary(self, summary: dict) -> None:
        rows = [(key, f"{value:.4f}" if isinstance(value, float) else str(value)) for key, value in summary.items()]
        if not self.console.is_terminal:
            self._line("[rlcore] run summary")
            for key, value in rows:
                self._line(f"[rlcore]   {key}: {value}")
            return
        table = Table(title="run summary")
        table.add_column("metric")
        table.add_column("value")
        for key, value in rows:
            table.add_row(key, value)
        self.console.print(table)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
