"""The sandbox API: statuses, sessions, the pool, run_tests, and refusing to run unisolated."""
import os
import sys
import threading
import time
import warnings

import pytest

from tools_sandbox import (Limits, RunResult, Sandbox, SandboxPool, SandboxUnavailable,
                           isolation_report, run_code, run_tests)
from tools_sandbox import isolation as iso_mod
from tools_sandbox.code_tests import split_tests
from tools_sandbox.hostcheck import host_dirs_in_scratch, leftovers, sandbox_or_skip

TIGHT = Limits(memory_mb=128, max_procs=24, scratch_mb=8, shm_mb=4, max_output_bytes=4096)


def _bwrap_or_skip():
    """Skips only where bwrap is missing or the kernel forbids its namespaces; fails otherwise."""
    sandbox_or_skip()


@pytest.fixture(scope="module")
def pool():
    _bwrap_or_skip()
    p = SandboxPool(max_workers=3, warm=2, limits=TIGHT)
    yield p
    p.close()
    assert leftovers() == []


def test_run_code_ok():
    _bwrap_or_skip()
    res = run_code("print(sum(range(100)))")
    assert isinstance(res, RunResult)
    assert (res.status, res.stdout, res.stderr, res.exit_code) == ("ok", "4950\n", "", 0)
    assert not res.truncated and not res.session_reset and res.duration_s > 0


def test_error_statuses(pool):
    res = pool.run("x = 1\n1 / 0")
    assert res.status == "error" and res.exit_code == 1
    assert res.error == "ZeroDivisionError: division by zero"
    assert 'File "<cell-1>", line 2' in res.stderr and "tools_sandbox" not in res.stderr
    res = pool.run("import sys; print('bye'); sys.exit(3)")
    assert (res.status, res.exit_code, res.stdout, res.reason) == ("error", 3, "bye\n", "SystemExit")
    assert pool.run("exit(0)").status == "ok"
    res = pool.run("import os; os._exit(5)")
    assert (res.status, res.exit_code, res.session_reset) == ("error", 5, True)
    assert pool.run("def f(:\n pass").error.startswith("SyntaxError")


def test_timeout_keeps_partial_output(pool):
    t0 = time.monotonic()
    res = pool.run("print('started', flush=True)\nwhile True: pass", timeout_s=0.5)
    assert res.status == "timeout" and res.exit_code is None and res.session_reset
    assert res.stdout == "started\n" and 0.5 <= res.duration_s < 2.5
    assert time.monotonic() - t0 < 5


def test_output_truncated_with_marker(pool):
    res = pool.run("print('a' * 10000)\nimport sys; sys.stderr.write('b' * 5000)")
    assert res.status == "ok" and res.truncated
    assert res.stdout.startswith("a" * 4096) and "[... 5905 bytes truncated ...]" in res.stdout
    assert res.stderr.startswith("b" * 4096) and "[... 904 bytes truncated ...]" in res.stderr
    res = pool.run("import os; os.system('echo from-a-child')")
    assert res.stdout == "from-a-child\n" and not res.truncated


def test_session_state_errors_and_reset(pool):
    with pool.session() as s:
        assert s.run("x = 41").stdout == ""
        assert s.run("x + 1").stdout == "42\n"  # a final expression is displayed
        assert s.run("import math\ny = math.sqrt(x + 8)").status == "ok"
        err = s.run("undefined_name")
        assert err.status == "error" and not err.session_reset
        assert s.run("print(x, y)").stdout == "41 7.0\n"  # the error kept the state
        s.run("open('notes.txt', 'w').write('kept')")
        assert s.run("open('notes.txt').read()").stdout == "'kept'\n"
        res = s.run("import time; time.sleep(30)", timeout_s=0.3)
        assert res.status == "timeout" and res.session_reset
        after = s.run("x")
        assert after.status == "error" and "NameError" in after.error
        assert s.run("import os; os.path.exists('notes.txt')").stdout == "False\n"
        assert s.resets == 1


def test_sessions_are_independent(pool):
    a, b = pool.new_session(), pool.new_session()
    try:
        a.run("secret = 'only-in-a'\nopen('/scratch/s.txt', 'w').write(secret)")
        res = b.run("print('secret' in globals(), sorted(__import__('os').listdir('/scratch')))")
        assert res.stdout == f"False {host_dirs_in_scratch()}\n"
        assert a.run("secret").stdout == "'only-in-a'\n"
    finally:
        a.close()
        b.close()
    with pytest.raises(RuntimeError):
        a.run("1")


def test_pool_is_thread_safe_and_limits_concurrency(pool):
    code = "import time\nt0 = time.time(); time.sleep(0.3); print(t0, time.time())"
    results = [None] * 6

    def call(i):
        results[i] = pool.run(code, timeout_s=10)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status == "ok" for r in results), results
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, d in edges:
        running += d
        peak = max(peak, running)
    assert peak <= pool.max_workers


def test_run_tests_counts_and_resists_exit_hacks(pool):
    code = "def double(x):\n    return 2 * x\n"
    passed, total, res = run_tests(code, ["assert double(2) == 4", "assert double(3) == 5",
                                          "assert double(0) == 0"], pool=pool)
    assert (passed, total) == (2, 3) and [r.passed for r in res] == [True, False, True]
    assert res[1].error == "AssertionError"
    # A string is split into statements; helpers and imports go with the next assert.
    tests = "import math\nassert double(1) == 2\ndef h(v):\n    return v\nassert double(h(4)) == 8\n"
    assert split_tests(tests) == ["import math\nassert double(1) == 2\n",
                                  "def h(v):\n    return v\nassert double(h(4)) == 8\n"]
    assert run_tests(code, tests, pool=pool)[:2] == (2, 2)
    for hack in ("import sys\ndef double(x):\n    sys.exit(0)\n",
                 "import os\ndef double(x):\n    os._exit(0)\n"):
        assert run_tests(hack, ["assert double(2) == 4", "assert double(1) == 2"],
                         pool=pool)[:2] == (0, 2)
    # A timeout in one test does not fail the next: the code is re-run in a fresh sandbox.
    slow = code + "def spin():\n    while True: pass\n"
    passed, total, res = run_tests(slow, ["spin()", "assert double(5) == 10"], timeout_s=0.5,
                                   pool=pool)
    assert (passed, total, res[0].status) == (1, 2, "timeout")
    passed, total, res = run_tests("raise ValueError('broken')", ["assert True"], pool=pool)
    assert (passed, total, res[0].status) == (0, 1, "skipped") and "ValueError" in res[0].error


def test_sandbox_object_and_site_packages():
    _bwrap_or_skip()
    with Sandbox(TIGHT) as sb:  # the venv's site-packages are visible, read-only
        res = sb.run("import os, sys\nprint(os.getcwd(), sys.prefix == %r)" % sys.prefix)
        assert res.stdout == "/scratch True\n", res
        assert sb.alive
    assert not sb.alive


def test_isolation_report():
    _bwrap_or_skip()
    rep = isolation_report()
    assert rep["mode"] == "bwrap" and "net" in rep["namespaces"] and "pid" in rep["namespaces"]
    if os.geteuid() == 0 and rep["cgroup_version"]:
        assert {"pids", "memory"} <= set(rep["cgroup_controllers"])


def test_missing_bwrap_is_refused_with_instructions(monkeypatch):
    monkeypatch.setattr(iso_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(iso_mod, "_cache", {})
    monkeypatch.delenv(iso_mod.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as exc:
        Sandbox()
    assert exc.value.kind == iso_mod.BWRAP_MISSING
    with pytest.raises(SandboxUnavailable):
        SandboxPool(max_workers=1, warm=0)
    monkeypatch.setenv(iso_mod.UNSAFE_ENV, "1")
    with pytest.warns(RuntimeWarning, match="WITHOUT ISOLATION"):
        sb = Sandbox(TIGHT)
    assert sb.iso.mode == "none_UNSAFE"


def test_unsafe_mode_is_explicit_and_works():
    with pytest.warns(RuntimeWarning, match="WITHOUT ISOLATION"):
        pool = SandboxPool(max_workers=1, warm=0, limits=TIGHT, isolation="none_UNSAFE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            with pool.session() as s:
                s.run("x = 2")
                assert s.run("x * 21").stdout == "42\n"
            assert pool.run("while True: pass", timeout_s=0.3).status == "timeout"
        finally:
            pool.close()
    with pytest.raises(ValueError):
        Sandbox(isolation="docker")


@pytest.mark.parametrize(
    "tree, expected",
    [
        # a VM as root (the H100 loan): our leaf has processes, its parent hands out controllers
        ({"": "cpu memory pids", "svc": "cpu memory pids", "svc/leaf": ""}, "svc"),
        # nothing delegated below the root: sandboxes go under the root
        ({"": "cpu memory pids", "svc": "", "svc/leaf": ""}, ""),
        # the nearest ancestor wins over the root, so limits set above us still apply
        ({"": "cpu memory pids", "svc": "memory pids", "svc/leaf": ""}, "svc"),
        # our own cgroup already delegates (e.g. we run in the root cgroup's place)
        ({"": "cpu memory pids", "svc": "cpu memory pids", "svc/leaf": "cpu memory pids"}, "svc/leaf"),
        # nothing anywhere: stay in our own cgroup (the report then names what is missing)
        ({"": "", "svc": "", "svc/leaf": ""}, "svc/leaf"),
    ],
)
def test_cgroup_v2_host_is_the_nearest_cgroup_that_delegates(tmp_path, tree, expected):
    from tools_sandbox.limits import v2_host_cgroup

    for rel, enabled in tree.items():
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel / "cgroup.subtree_control").write_text(enabled + "\n")
    assert v2_host_cgroup(tmp_path, "/svc/leaf") == (tmp_path / expected if expected else tmp_path)
