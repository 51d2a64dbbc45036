"""benchmarks/gpu_learner.py is what a GPU loan runs; on CPU (gloo) it must keep its invariants."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_learner.py"


@pytest.fixture(scope="module")
def gpu_learner():
    spec = importlib.util.spec_from_file_location("gpu_learner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learner_checks_hold_on_cpu(gpu_learner, tmp_path):
    res = gpu_learner.run_checks(tmp_path, "float32", sft_steps=4, device_hint="cpu")
    assert res["backend"] == "gloo" and res["device"] == "cpu"
    assert res["sft"]["nll_last"] < res["sft"]["nll_first"]
    assert res["logprob_gap_vs_fp32"]["max"] < 1e-4  # fp32 compute: only summation order differs
    assert res["gather"]["dtypes"] == ["float32"] and res["gather"]["max_abs_diff_vs_saved"] == 0.0
    ck = res["checkpoint"]
    assert ck["restored_vs_saved_max"] == 0.0  # DCP load puts back exactly what was saved
    assert ck["step_moved_max"] > 0.0  # the GRPO step changed the policy...
    assert ck["step_after_restore_vs_first_max"] < 1e-5  # ...and repeats after a restore
    assert ck["loss_again"] == pytest.approx(ck["loss_first"], rel=1e-5)
    assert res["rollout_vs_learner_logprob"]["max"] < 1e-4
    assert res["critic"]["vf_loss_last"] < res["critic"]["vf_loss_first"]
