"""benchmarks/gvm_allocation.py's headline: samples each arm needs to the weaker arm's best accuracy."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gvm_allocation", ROOT / "benchmarks" / "gvm_allocation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path, curve: list[tuple[int, int, float]]) -> None:
    """(generated this step, pre-sampled this step, eval accuracy after it), step 0 = the start."""
    run_dir.mkdir(parents=True)
    rows, total = [], 0
    for step, (generated, presampled, accuracy) in enumerate(curve):
        total += generated
        rows.append({"step": step, "samples/generated": total, "samples/step_presampled": presampled,
                     "eval/accuracy": accuracy})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_ratio_at_the_weaker_arms_best_counts_presamples_or_leaves_them_out(bench, tmp_path):
    spec = SimpleNamespace(runs_dir=tmp_path, seeds=[0, 1], metric="eval/accuracy")
    # seed 0: uniform peaks at 0.5 (after 300 samples); GVM gets there after 200, 100 of them pre-samples.
    write_run(tmp_path / "u-s0", [(0, 0, 0.2), (100, 0, 0.3), (100, 0, 0.4), (100, 0, 0.5)])
    write_run(tmp_path / "g-s0", [(0, 0, 0.2), (200, 100, 0.6), (200, 0, 0.7)])
    # seed 1: neither arm ever rises above the start: no ratio.
    write_run(tmp_path / "u-s1", [(0, 0, 0.2), (100, 0, 0.2)])
    write_run(tmp_path / "g-s1", [(0, 0, 0.2), (200, 100, 0.1)])
    every = bench.weaker_arm_ratios(spec, "u", "g", "samples", smooth=1)
    assert every[0] == {"seed": 0, "target": 0.5, "uniform_samples": 300, "gvm_samples": 200, "ratio": 1.5}
    assert every[1]["target"] is None and every[1]["ratio"] is None
    trained = bench.weaker_arm_ratios(spec, "u", "g", "trained", smooth=1)
    assert trained[0]["gvm_samples"] == 100 and trained[0]["ratio"] == 3.0


def test_the_target_comes_from_means_over_three_evals(bench, tmp_path):
    spec = SimpleNamespace(runs_dir=tmp_path, seeds=[0], metric="eval/accuracy")
    write_run(tmp_path / "u-s0", [(0, 0, 0.2), (100, 0, 0.5), (100, 0, 0.2), (100, 0, 0.2), (100, 0, 0.2)])
    write_run(tmp_path / "g-s0", [(0, 0, 0.2), (100, 0, 0.3), (100, 0, 0.4), (100, 0, 0.4), (100, 0, 0.4)])
    points = bench.load_points(tmp_path / "u-s0", "eval/accuracy")
    assert [round(p["accuracy"], 4) for p in bench.smoothed(points, 3)] == [0.2, 0.35, 0.3, 0.3, 0.2]
    raw = bench.weaker_arm_ratios(spec, "u", "g", smooth=1)[0]
    assert raw["target"] == 0.4  # uniform's one lucky 0.5 made GVM the weaker arm
    mean3 = bench.weaker_arm_ratios(spec, "u", "g", smooth=3)[0]
    # GVM's means: 0.2, 0.25, 0.3, 0.367, 0.4; uniform is the weaker arm, its best mean 0.35.
    assert mean3["target"] == pytest.approx(0.35)
    assert (mean3["uniform_samples"], mean3["gvm_samples"]) == (100, 300)
