"""Isolated execution of model-written Python (bubblewrap namespaces, cgroups, rlimits).

    from tools_sandbox import run_code, SandboxPool, run_tests
    run_code("print(sum(range(100)))", timeout_s=5.0)   # RunResult(status="ok", stdout="4950\\n")
    with SandboxPool(max_workers=8) as pool:
        with pool.session() as s:                        # Jupyter-like state across calls
            s.run("x = 41"); s.run("x + 1").stdout       # "42\\n"
    run_tests("def f(x): return 2*x", ["assert f(2) == 4"])   # (1, 1, [...])

Every sandbox is a fresh bwrap container (no network, read-only system, private tmpfs
scratch, own pid namespace, unprivileged uid) in its own cgroup (memory, pids, cpu). If the
isolation is missing, ``SandboxUnavailable`` says what and how to install it; running without
isolation needs ``isolation="none_UNSAFE"`` (or RLCORE_SANDBOX_UNSAFE_NO_ISOLATION=1 where bwrap
is unusable). ``isolation_report()`` says what is in effect on this machine.
"""
from tools_sandbox.code_tests import TestResult, run_tests
from tools_sandbox.isolation import UNSAFE, UNSAFE_ENV, SandboxUnavailable
from tools_sandbox.limits import CgroupSetup, Limits
from tools_sandbox.pool import SandboxPool, Session, default_pool, run_code
from tools_sandbox.result import RunResult
from tools_sandbox.sandbox import Sandbox, SandboxError


def isolation_report(isolation: str = "bwrap") -> dict:
    """What a sandbox gets on this machine, and what is missing (for logs and docs)."""
    from tools_sandbox import isolation as iso_mod

    iso = iso_mod.resolve(isolation)
    cg = CgroupSetup.get()
    ctrls = sorted(cg.parents)
    return {
        "mode": iso.mode,
        "bwrap": iso.bwrap,
        "privileged": iso.privileged,
        "namespaces": ["mount", "pid", "net", "ipc", "uts", "cgroup"]
        + ([] if iso.privileged or iso.mode != "bwrap" else ["user"]),
        "cgroup_version": cg.version,
        "cgroup_controllers": ctrls,
        "rlimits": sorted(Limits().rlimits("memory" in ctrls, "pids" in ctrls,
                                           iso.mode == "bwrap")),
        "uid": "random high uid per sandbox" if iso.privileged else (
            "65534 in a user namespace" if iso.mode == "bwrap" else "yours (UNSAFE)"),
        "missing": list(cg.problems),
        "notes": list(iso.notes),
    }


__all__ = ["run_code", "run_tests", "RunResult", "TestResult", "Sandbox", "SandboxPool",
           "Session", "Limits", "SandboxUnavailable", "SandboxError", "default_pool",
           "isolation_report", "UNSAFE", "UNSAFE_ENV"]
