"""Pinning workers to cores (rollout.cpu_cores / learner.cpu_cores), checked in a child process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import json, os, sys, torch
from rlcore.cpu_pinning import pin_to_cores
pin_to_cores([int(c) for c in sys.argv[1].split(",")], vllm=True)
print(json.dumps({"affinity": sorted(os.sched_getaffinity(0)), "threads": torch.get_num_threads(),
                  "bind": os.environ["VLLM_CPU_OMP_THREADS_BIND"]}))
"""


def run_child(cores: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, cores], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_pins_process_threads_and_vllm_binding():
    core = min(os.sched_getaffinity(0))
    out = run_child(str(core))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"affinity": [core], "threads": 1, "bind": str(core)}


def test_unavailable_core_is_a_clear_error():
    out = run_child(str(max(os.sched_getaffinity(0)) + 1000))
    assert out.returncode != 0
    assert "are not available to this process" in out.stderr
