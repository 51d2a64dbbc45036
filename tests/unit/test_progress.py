"""Progress off a terminal: plain, whole lines with every field (rlcore/progress.py)."""
from __future__ import annotations

import io

from rlcore.progress import Progress


def _run(progress: Progress, sft_steps=20, rl_steps=6, eval_every=3):
    long_path = "/work/main/runs/" + "a-rather-long-run-name-" * 5 + "/x"
    with progress:
        progress.start_sft(sft_steps)
        for step in range(1, sft_steps + 1):
            progress.sft_step(step, {"train/nll": 1.0 / step})
        progress.eval_done(0, 0.125)
        progress.start_rl(rl_steps, 0)
        for step in range(1, rl_steps + 1):
            if step % eval_every == 0:
                progress.eval_done(step, 0.5)
            progress.step_done(step, {"reward/mean": 0.25, "reward/accuracy": 0.375, "time/step_s": 1.5})
        progress.note(("a note that is much longer than eighty columns, " * 3).strip())
        progress.summary({"name": "uxcheck", "eval_accuracy_last": 0.5, "run_dir": long_path})
    return long_path


def test_plain_lines_off_terminal_are_whole():
    out = io.StringIO()
    long_path = _run(Progress(enabled=True, file=out, sft_lines=4))
    lines = out.getvalue().splitlines()
    text = out.getvalue()
    assert "…" not in text and "━" not in text  # no squeezed bar render
    assert all(line.startswith("[rlcore]") for line in lines)
    sft = [line for line in lines if "SFT warm-up step" in line]
    assert [line.split()[4] for line in sft] == ["5/20", "10/20", "15/20", "20/20"]
    assert "nll 0.050" in sft[-1] and "elapsed" in sft[-1] and "eta 0:00" in sft[-1]
    rl = [line for line in lines if "RL step" in line]
    assert len(rl) == 6 and rl[-1].startswith("[rlcore] RL step 6/6  reward 0.250  acc 0.375  eval 0.500  1.50s/step")
    assert sum("eval @ step" in line for line in lines) == 3
    assert any(line.endswith("much longer than eighty columns,") for line in lines)
    assert f"[rlcore]   run_dir: {long_path}" in lines
    assert "[rlcore]   eval_accuracy_last: 0.5000" in lines


def test_rl_lines_are_thinned_but_the_last_step_is_kept():
    out = io.StringIO()
    progress = Progress(enabled=True, file=out, rl_lines=10)
    progress.start_rl(95, 0)
    for step in range(1, 96):
        progress.step_done(step, {"reward/mean": 0.0})
    steps = [line.split()[3] for line in out.getvalue().splitlines()]
    assert steps == [f"{s}/95" for s in range(10, 91, 10)] + ["95/95"]


def test_disabled_progress_keeps_evals_and_summary_only():
    out = io.StringIO()
    _run(Progress(enabled=False, file=out))
    text = out.getvalue()
    assert "SFT warm-up step" not in text and "RL step" not in text
    assert "eval @ step 3: accuracy 0.500" in text and "run_dir:" in text


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_terminal_keeps_the_live_bar():
    out = _Tty()
    progress = Progress(enabled=True, file=out)
    assert progress.live
    _run(progress)
    text = out.getvalue()
    assert "━" in text and "run summary" in text
    assert "SFT warm-up step" not in text  # the bar, not plain step lines
