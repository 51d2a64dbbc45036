"""Hostile code must be contained: expected status, host untouched, nothing left running,
and the pool still serves a normal call right after."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tools_sandbox import Limits, SandboxPool, isolation_report
from tools_sandbox.hostcheck import (host_dirs_in_scratch, leftovers, marker_pids,
                                     sandbox_or_skip)

TIGHT = Limits(memory_mb=128, max_procs=24, scratch_mb=8, shm_mb=4, max_output_bytes=4096)


@pytest.fixture(scope="module")
def pool():
    sandbox_or_skip()  # skips only without bwrap or namespaces; any other failure fails
    p = SandboxPool(max_workers=3, warm=2, limits=TIGHT)
    yield p
    p.close()


def _cgroup(ctrl):
    """Without the cgroup (e.g. non-root), rlimits stand in and the symptoms differ."""
    return ctrl in isolation_report()["cgroup_controllers"]


@pytest.fixture()
def canary():
    """A host process that must survive every attack."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    assert proc.poll() is None, "a host process was killed"
    proc.kill()
    proc.wait()


def contained(pool, marker=None):
    assert leftovers(marker) == [], "processes left behind"
    res = pool.run("print(6 * 7)", timeout_s=10)
    assert (res.status, res.stdout) == ("ok", "42\n"), res


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()\n",
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'b(){ b|b& }; b'])\nwhile True: pass\n",
], ids=["fork", "fork-retrying", "shell"])
def test_fork_bomb(pool, canary, code):
    res = pool.run(code, timeout_s=1.5)
    assert res.status in ("error", "timeout"), res
    if _cgroup("pids"):
        assert res.reason in ("process/thread limit reached", "wall clock",
                              "wall clock (hard kill)")
    contained(pool)


def test_thread_bomb(pool):
    res = pool.run("import threading, time\nwhile True:\n"
                   "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    assert res.status == "error" and "can't start new thread" in res.error, res
    assert res.reason == "process/thread limit reached" or not _cgroup("pids")
    contained(pool)


@pytest.mark.parametrize("code", ["blocks = []\nwhile True:\n    blocks.append(bytearray(8 << 20))\n",
                                  "x = bytearray(8 << 30)\n"], ids=["growing", "one-huge"])
def test_memory_blowup(pool, code):
    res = pool.run(code, timeout_s=10)
    if not _cgroup("memory"):  # RLIMIT_AS: the allocation fails inside Python
        assert res.status == "error" and "MemoryError" in res.error, res
        return contained(pool)
    assert (res.status, res.reason, res.session_reset) == ("killed", "memory", True), res
    assert "memory limit (128 MiB)" in res.stderr
    contained(pool)


def test_memory_blowup_in_session_resets_it(pool):
    with pool.session() as s:
        s.run("keep = 1")
        res = s.run("x = ' ' * (1 << 30)", timeout_s=10)
        if _cgroup("memory"):
            assert res.status == "killed" and res.session_reset
            assert s.run("keep").status == "error"  # fresh sandbox: state gone, session works
    contained(pool)


def test_infinite_loop(pool):
    res = pool.run("while True:\n    pass\n", timeout_s=0.5)
    assert (res.status, res.reason) == ("timeout", "wall clock")
    contained(pool)


def test_busy_loop_ignoring_signals(pool, canary):
    code = ("import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, "
            "signal.SIGHUP, signal.SIGXCPU):\n    signal.signal(s, signal.SIG_IGN)\n"
            "while True:\n    try:\n        pass\n    except BaseException:\n        pass\n")
    t0 = time.monotonic()
    res = pool.run(code, timeout_s=0.5)
    assert (res.status, res.reason) == ("timeout", "wall clock (hard kill)"), res
    assert time.monotonic() - t0 < 5
    contained(pool)


@pytest.mark.parametrize("code,err", [
    ("with open('/scratch/fill', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))\n",
     "File too large"),
    ("i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * (1 << 20))\n    i += 1\n",
     "No space left on device"),
    ("i = 0\nwhile True:\n    open(f'/dev/shm/f{i}', 'wb').write(b'x' * (1 << 20))\n    i += 1\n",
     "No space left on device"),
], ids=["one-file", "many-files", "shm"])
def test_disk_fill(pool, code, err):
    res = pool.run(code, timeout_s=5)
    assert res.status == "error" and err in res.error, res
    contained(pool)


def test_huge_output(pool):
    res = pool.run("print('x' * (20 << 20))\nimport os\nos.write(2, b'e' * (1 << 20))", timeout_s=10)
    assert res.status == "ok" and res.truncated
    assert len(res.stdout) < 4096 + 100 and "bytes truncated" in res.stdout
    assert len(res.stderr) < 4096 + 100 and "bytes truncated" in res.stderr
    res = pool.run("while True:\n    print('spam' * 1000)\n", timeout_s=0.5)
    assert res.status == "timeout" and res.truncated and len(res.stdout) < 4096 + 100
    contained(pool)


def test_writes_outside_scratch(pool, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("original")
    paths = ["/etc/evil", "/usr/evil", "/work/main/evil", sys.prefix + "/evil", "/evil",
             "/root/evil", "/dev/evil", str(target), os.path.abspath(__file__)]
    code = ("import os\nres = []\nfor p in %r:\n    try:\n        open(p, 'a').write('x')\n"
            "        res.append(p)\n    except OSError:\n        pass\nprint(res)\n"
            "open('/tmp/escape-%s', 'w').write('x')\nprint(os.path.realpath('/tmp'))" %
            (paths, os.getpid()))
    res = pool.run(code)
    assert res.stdout == "[]\n/scratch\n", res
    assert target.read_text() == "original"
    assert not os.path.exists(f"/tmp/escape-{os.getpid()}")
    assert not any(os.path.exists(p) for p in paths if p.endswith("evil"))
    contained(pool)


def test_reading_host_files(pool, monkeypatch):
    monkeypatch.setenv("RLCORE_TEST_SECRET", "hunter2-" + uuid.uuid4().hex)
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    paths = ["/etc/shadow", os.path.abspath(readme), os.path.abspath(__file__),
             os.path.expanduser("~/.bash_history"), "/proc/1/root/etc/shadow"]
    code = ("res = {}\nfor p in %r:\n    try:\n        res[p] = open(p).read()[:20]\n"
            "    except OSError as e:\n        res[p] = type(e).__name__\nprint(res)\n"
            "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\nprint(len(pids))\n"
            "env = str(os.environ)\nfor p in pids:\n    try:\n"
            "        env += open(f'/proc/{p}/environ').read()\n    except OSError:\n        pass\n"
            "print(env)" % paths)
    res = pool.run(code)
    assert res.status == "ok", res
    found = eval(res.stdout.splitlines()[0])
    assert all(v in ("FileNotFoundError", "PermissionError") for v in found.values()), found
    assert int(res.stdout.splitlines()[1]) <= 3  # only bwrap's init and the driver are visible
    assert "hunter2" not in res.stdout  # the host's environment does not leak in
    contained(pool)


def test_other_sessions_scratch_is_invisible(pool):
    with pool.session() as a, pool.session() as b:
        a.run("open('/scratch/secret.txt', 'w').write('s3cret')")
        res = b.run("import glob\nprint(glob.glob('/scratch/*') + glob.glob('/proc/*/root/scratch/*')"
                    " + glob.glob('/proc/*/cwd/*'))")
        # nothing but what every sandbox has there: host dirs bound read-only (usually none;
        # an interpreter under /tmp on the host appears under /scratch, where /tmp leads)
        own = host_dirs_in_scratch()
        assert all(os.path.basename(f) in own for f in eval(res.stdout)), res
        assert "secret" not in res.stdout, res
    contained(pool)


def test_network_loopback_and_dns(pool):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    code = ("import socket\nres = []\nfor addr in [('127.0.0.1', %d), ('8.8.8.8', 53)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=1)\n        res.append('OPEN')\n"
            "    except OSError:\n        res.append('blocked')\ntry:\n"
            "    socket.getaddrinfo('example.com', 80)\n    res.append('DNS')\nexcept OSError:\n"
            "    res.append('no-dns')\nprint(res, [n for _, n in socket.if_nameindex()])" % port)
    try:
        srv.settimeout(0.01)
        res = pool.run(code, timeout_s=5)
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()
    assert res.stdout == "['blocked', 'blocked', 'no-dns'] ['lo']\n", res
    contained(pool)


@pytest.mark.parametrize("code,status", [
    ("import os, signal\nfor p in (os.getppid(), 1, -1):\n    try:\n        os.kill(p, signal.SIGKILL)\n"
     "    except OSError:\n        pass\nprint('alive')", "ok"),
    ("import subprocess\nsubprocess.run(['/bin/kill', '-9', '-1'])\nprint('unreached')", "killed"),
], ids=["kill-parent", "kill-minus-1"])
def test_killing_the_parent(pool, canary, code, status):
    parent = os.getppid()  # were it killed, we would be re-parented (to 1 or a subreaper)
    res = pool.run(code)
    assert res.status == status, res
    assert os.getppid() == parent
    os.kill(parent, 0)  # still there
    contained(pool)


DAEMON = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c",
                 "import time\\nwhile True:\\n    open('/tmp/{marker}', 'a').write('.')\\n    time.sleep(0.1)",
                 "{marker}"])
    os._exit(0)
os.wait()
print("parent returned")
"""


def test_double_forked_daemon_is_gone(pool):
    marker = "sbx-daemon-" + uuid.uuid4().hex
    res = pool.run(DAEMON.format(marker=marker))
    assert (res.status, res.stdout) == ("ok", "parent returned\n")
    contained(pool, marker)  # one-shot: the pid namespace died with the call
    with pool.session() as s:
        s.run(DAEMON.format(marker=marker))
        wait = f"import os, time\nwhile not os.path.exists('/tmp/{marker}'): time.sleep(0.05)"
        assert s.run(wait, timeout_s=10).status == "ok"  # the daemon lives while the session does
        assert marker_pids(marker)
    contained(pool, marker)  # session closed: gone too
    assert not os.path.exists(f"/tmp/{marker}")  # its writes never reached the host


def test_deep_recursion(pool):
    res = pool.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert res.status == "error" and res.error.startswith("RecursionError")
    assert "[Previous line repeated" in res.stderr
    res = pool.run("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
                   timeout_s=10)
    # memory cap or stack overflow; with RLIMIT_AS instead of a memory cgroup, an error
    assert res.status == "killed" or (res.status == "error" and not _cgroup("memory")), res
    contained(pool)


def test_input_gets_eof(pool):
    res = pool.run("x = input('name? ')")
    assert res.status == "error" and res.error.startswith("EOFError") and res.duration_s < 2
    contained(pool)


def test_no_privileges_inside(pool):
    res = pool.run("import os\ntry:\n    os.setuid(0)\n    print('root!')\nexcept OSError:\n"
                   "    print('denied', os.getuid() != 0)\n"
                   "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    assert res.stdout == "denied True\n0000000000000000\n", res


def test_attack_does_not_block_other_calls(pool):
    slow = {}
    t = threading.Thread(target=lambda: slow.setdefault("r", pool.run("while True: pass", 1.5)))
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    res = pool.run("print('quick')", timeout_s=5)
    assert res.stdout == "quick\n" and time.monotonic() - t0 < 1.5
    t.join()
    assert slow["r"].status == "timeout"
    contained(pool)
