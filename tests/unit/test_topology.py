"""The local cluster's size: what the run's actors ask for, a critic included only when the
algorithm has one."""
from __future__ import annotations

import pytest

from rlcore.config import load_config
from rlcore.topology import cpus_wanted


@pytest.mark.parametrize("algorithm, expected", [("grpo", 1 + 2), ("ppo", 1 + 2 + 3 * 1.5)])
def test_cpus_wanted_counts_engines_learners_and_a_critic(algorithm, expected):
    cfg = load_config(None, ["model.path=unused", f"algorithm.name={algorithm}", "rollout.num_workers=1",
                             "learner.num_ranks=2", "learner.cpus_per_rank=1", "critic.num_ranks=3",
                             "critic.cpus_per_rank=1.5", "rollout.prompts_per_step=4", "rollout.n_samples=6"])
    assert cpus_wanted(cfg) == pytest.approx(expected)



def test_local_runtime_env_quotes_an_interpreter_under_a_space(monkeypatch):
    from rlcore import topology

    monkeypatch.setattr(topology.sys, "executable", "/opt/py/bin/python")
    plain = topology.local_runtime_env()
    assert "py_executable" not in plain and plain["env_vars"]["GLOO_SOCKET_IFNAME"] == "lo"
    monkeypatch.setattr(topology.sys, "executable", "/tmp/fresh clone/.venv/bin/python")
    assert topology.local_runtime_env()["py_executable"] == "'/tmp/fresh clone/.venv/bin/python'"


def test_vllm_engine_runs_compiled_functions_eagerly_only_under_a_space(monkeypatch):
    import torch

    from rollout import vllm_engine

    monkeypatch.setattr(torch._dynamo.config, "disable", False)
    monkeypatch.setattr(torch, "__file__", "/opt/py/lib/site-packages/torch/__init__.py")
    vllm_engine._run_compiled_functions_eagerly_under_a_space()
    assert torch._dynamo.config.disable is False
    monkeypatch.setattr(torch, "__file__", "/tmp/fresh clone/.venv/lib/site-packages/torch/__init__.py")
    vllm_engine._run_compiled_functions_eagerly_under_a_space()
    assert torch._dynamo.config.disable is True
