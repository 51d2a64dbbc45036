"""Tool-integrated GRPO on the real stack: vLLM stops at the code fence, the bubblewrap sandbox
runs the block, the output is inserted and masked, and the learners train on the trajectory."""
from __future__ import annotations

import json
import shutil

import pytest

from rlcore.engine_sync import logprob_mismatch_threshold
from rlcore.trainer import Trainer

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")]


def test_tool_rollouts_train_and_log_tool_metrics(ray_cluster, make_config):
    cfg = make_config(
        name="tools", learner__num_ranks=1,
        data={"task": "arith", "n_train": 400, "n_eval": 8, "arith_answer_format": "tool",
              "arith_max_operands": 2},
        sft={"steps": 40, "batch_size": 32, "lr": 3e-3},
        rollout={"engine": "vllm", "prompts_per_step": 4, "n_samples": 4, "max_new_tokens": 64},
        tools={"enabled": True, "max_tool_calls": 1, "sandbox_workers": 2, "all_failed_penalty": -0.1,
               "no_more_code_message": ""},
        eval={"every": 2, "num_prompts": 8},
    )
    summary = Trainer(cfg).run()
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0 and "tool/calls_mean" in r]
    assert len(steps) == 2
    for r in steps:
        assert 0.0 <= r["tool/used_frac"] <= 1.0 and r["tool/error_rate"] >= 0.0
        # Interpreter output never counts as policy tokens: the engine/learner check still holds.
        assert r["sync/logprob_diff_max"] < logprob_mismatch_threshold(cfg)
        if r["tool/calls_mean"] > 0:
            assert r["tool/inserted_token_frac"] > 0.0
