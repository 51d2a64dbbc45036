"""`rlcore eval` end to end on the tiny model (real vLLM CPU engine, real reward pool), and the
benchmarks inside training (Ray rollout group + FSDP learner)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _rlcore_eval(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """The real CLI in its own process: the in-process vLLM engine leaves nothing behind in pytest."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "rlcore.cli", "eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _check_benchmark(m: dict, problems: int, n: int, max_new_tokens: int) -> None:
    assert m["num_problems"] == problems and m["n"] == n and m["num_skipped_too_long"] == 0
    assert m["reward"] in ("math_answer", "gsm8k_answer") and m["reward_failures"] == 0
    assert 0.0 <= m["accuracy"] <= 1.0
    lo, hi = m["accuracy_ci95"]
    assert 0.0 <= lo <= m["accuracy"] <= hi <= 1.0
    assert set(m["pass@k"]) == set(m["maj@k"]) == {"1", "2"}
    assert m["pass@k"]["1"] == pytest.approx(m["accuracy"])  # pass@1 is the mean accuracy
    assert m["pass@k"]["1"] <= m["pass@k"]["2"] <= 1.0  # monotone in k
    assert all(0.0 <= v <= 1.0 for v in m["maj@k"].values())
    assert 0 < m["response_length_mean"] <= max_new_tokens
    assert 0.0 <= m["truncated_frac"] <= 1.0


def test_rlcore_eval_vllm(tiny_model, tmp_path):
    out = tmp_path / "eval"
    proc = _rlcore_eval("--model", tiny_model, "--benchmarks", "math500,gsm8k", "--limit", "3", "--n", "2",
                        "--k", "1,2", "--temperature", "1.0", "--max-new-tokens", "16", "--reward-workers", "1",
                        "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "eval.json").read_text())
    assert doc["model_path"] == tiny_model and doc["engine"] == "vllm"
    assert doc["settings"]["n"] == 2 and doc["settings"]["temperature"] == 1.0
    assert list(doc["benchmarks"]) == ["math500", "gsm8k"]
    for name, m in doc["benchmarks"].items():
        _check_benchmark(m, problems=3, n=2, max_new_tokens=16)
        rows = [json.loads(line) for line in (out / "samples" / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 6 and all(r["length"] <= 16 for r in rows)
        assert sum(r["correct"] for r in rows) / 6 == pytest.approx(m["accuracy"])
    assert "accuracy_by_group" in doc["benchmarks"]["math500"]  # MATH levels
    assert "\\boxed{}" in doc["benchmarks"]["gsm8k"]["example_prompt"]
    table = (out / "eval.md").read_text()
    assert "| math500 | 3 | 2 |" in table and "| gsm8k | 3 | 2 |" in table
    assert "| math500 | 3 | 2 |" in proc.stdout  # printed too


def test_rlcore_eval_hf_engine_on_a_checkpoint_layout(tiny_model, tmp_path):
    """The transformers fallback, pointed at a run directory (latest checkpoint's model/)."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_3"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "model").symlink_to(tiny_model, target_is_directory=True)
    out = tmp_path / "eval_hf"
    proc = _rlcore_eval("--model", str(run), "--engine", "hf", "--benchmarks", "gsm8k", "--limit", "2", "--n", "2",
                        "--temperature", "1.0", "--max-new-tokens", "8", "--reward-workers", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((out / "eval.json").read_text())
    assert doc["model_path"] == str(ckpt / "model") and doc["engine"] == "hf"
    _check_benchmark(doc["benchmarks"]["gsm8k"], problems=2, n=2, max_new_tokens=8)


def test_benchmarks_inside_training(ray_cluster, make_config):
    from rlcore.tracking import read_metrics
    from rlcore.trainer import Trainer

    cfg = make_config(
        sft__steps=0, learner__num_ranks=1, trainer__total_steps=1,
        eval__benchmarks=["gsm8k"], eval__benchmark_limit=2, eval__benchmark_n=2, eval__benchmark_temperature=1.0,
        eval__benchmark_max_new_tokens=8,
    )
    Trainer(cfg).run()
    rows = [r for r in read_metrics(cfg.run_dir) if "eval/gsm8k/accuracy" in r]
    assert [r["step"] for r in rows] == [0, 1]
    for row in rows:
        assert 0.0 <= row["eval/accuracy"] <= 1.0  # the arithmetic eval set is still scored
        assert row["eval/gsm8k/num_problems"] == 2
        assert row["eval/gsm8k/pass@1"] == pytest.approx(row["eval/gsm8k/accuracy"])
        assert row["eval/gsm8k/pass@1"] <= row["eval/gsm8k/pass@2"]
        assert 0.0 <= row["eval/gsm8k/maj@2"] <= 1.0
    saved = json.loads((cfg.run_dir / "benchmarks" / "step_1.json").read_text())
    assert saved["benchmarks"]["gsm8k"]["n"] == 2
