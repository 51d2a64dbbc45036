"""The sandbox starts wherever the project and its interpreter live (a venv under /tmp, a path
with spaces, a home dir, a system interpreter); a sandbox test skips only where bubblewrap is
missing or the kernel forbids its namespaces; .ci/run fails when the sandbox tests did not run."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tools_sandbox import Limits, Sandbox, SandboxUnavailable
from tools_sandbox import isolation as iso_mod
from tools_sandbox.hostcheck import SKIP_MARK, sandbox_or_skip, skip_reason

REPO = Path(__file__).resolve().parents[2]
TIGHT = Limits(memory_mb=128, max_procs=24, scratch_mb=8, shm_mb=4, max_output_bytes=4096)


@pytest.fixture(scope="module")
def under_tmp():
    """A dir right under /tmp (not $TMPDIR, which may be elsewhere), with spaces in its name."""
    d = Path(tempfile.mkdtemp(prefix="rlcore sbx ", dir="/tmp"))
    (d / "host-secret.txt").write_text("not for the sandbox")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tmp_venv(under_tmp):
    venv = under_tmp / "v e n v"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
    return venv


def test_venv_under_tmp_with_spaces(under_tmp, tmp_venv):
    sandbox_or_skip()
    with Sandbox(TIGHT, python=str(tmp_venv / "bin" / "python")) as sb:
        res = sb.run("import os, sys\nprint(sys.prefix)\nprint(os.getcwd(), os.path.realpath('/tmp'))"
                     "\nopen('/tmp/t', 'w').write('x')\nprint(open('/scratch/t').read())")
        assert res.stdout == f"{tmp_venv}\n/scratch /scratch\nx\n", res
        # only the venv of that host dir is visible, read-only; the rest of the host's /tmp is not
        res = sb.run(f"import os\nprint(sorted(os.listdir({str(under_tmp)!r})))\n"
                     f"open({str(under_tmp / 'host-secret.txt')!r})")
        assert res.stdout == "['v e n v']\n" and res.error.startswith("FileNotFoundError"), res
        res = sb.run(f"open({str(tmp_venv / 'evil')!r}, 'w')")
        assert res.status == "error" and "Read-only file system" in res.error, res
    assert not (tmp_venv / "evil").exists()


def _interpreters():
    out = {"venv under /tmp": None,  # made by the tmp_venv fixture
           "base interpreter": os.path.realpath(getattr(sys, "_base_executable", sys.executable))}
    if os.path.exists("/usr/bin/python3"):
        out["system /usr/bin/python3"] = "/usr/bin/python3"
    return out


_RUN_IN_PROJECT = textwrap.dedent("""
    import json, sys
    from tools_sandbox import isolation, run_code
    try:
        isolation.resolve("bwrap", env_fallback=False)
    except isolation.SandboxUnavailable as exc:
        print(json.dumps({"kind": exc.kind, "error": str(exc)}))
        sys.exit(0)
    res = run_code("import sys; print(sys.prefix)")
    print(json.dumps({"kind": None, "status": res.status, "stdout": res.stdout,
                      "error": res.stderr + str(res.error), "prefix": sys.prefix}))
""")


@pytest.mark.parametrize("which", list(_interpreters()))
def test_project_under_tmp_with_any_interpreter(under_tmp, tmp_venv, which):
    """The project itself (tools_sandbox, its driver) under /tmp in a path with spaces, run by
    a venv there, by the base interpreter (under a home dir here) or the system one."""
    sandbox_or_skip()
    python = _interpreters()[which] or str(tmp_venv / "bin" / "python")
    project = under_tmp / "my project"
    if not project.exists():
        shutil.copytree(REPO / "tools_sandbox", project / "tools_sandbox",
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop(iso_mod.UNSAFE_ENV, None)
    proc = subprocess.run([python, "-c", _RUN_IN_PROJECT], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    # bwrap and namespaces work here (sandbox_or_skip passed): every kind is a failure
    assert out["kind"] is None, out["error"]
    assert (out["status"], out["stdout"]) == ("ok", out["prefix"] + "\n"), out


def test_argv_mounts_scratch_before_host_dirs_under_tmp(tmp_venv, tmp_path):
    """No bwrap needed: /tmp is the /scratch symlink before any host dir is bound, and a host
    dir under /tmp or /scratch is bound inside the scratch tmpfs, where /tmp leads."""
    info = iso_mod.PythonInfo(str(tmp_venv / "bin" / "python"), [str(tmp_venv), sys.base_prefix])
    for privileged in (True, False):
        iso = iso_mod.Isolation("bwrap", info, bwrap="/usr/bin/bwrap", privileged=privileged)
        argv, _ = iso_mod.bwrap_argv(iso, 1 << 30, 8, 4, ro_binds=((str(tmp_path), "/scratch/d"),))
        binds = {argv[i + 2]: i for i, a in enumerate(argv) if a == "--ro-bind"}
        venv_in = "/scratch" + str(tmp_venv)[len("/tmp"):]
        assert venv_in in binds and "/scratch/d" in binds and str(tmp_venv) not in binds
        link = next(i for i in range(len(argv)) if argv[i:i + 3] == ["--symlink", "/scratch", "/tmp"])
        tmpfs = next(i for i in range(len(argv)) if argv[i:i + 2] == ["--tmpfs", "/scratch"])
        assert tmpfs < link < binds[venv_in]
        assert link < binds["/scratch/d"] and argv.index("--proc") < binds[venv_in]
        assert not any(argv[i:i + 2] == ["--dir", "/tmp"] for i in range(len(argv)))
        assert argv[-1] == str(tmp_venv / "bin" / "python")
        for bad in ("/tmp", "/scratch", "/proc/x", "/dev/null"):
            with pytest.raises(ValueError, match="mounts its own"):
                iso_mod.bwrap_argv(iso, None, 8, 4, ro_binds=((str(tmp_path), bad),))
    assert iso_mod.sandbox_path("/tmp/a b/c") == "/scratch/a b/c"
    assert iso_mod.sandbox_path("/tmpfoo/x") == "/tmpfoo/x"


# -- when a sandbox test may skip -----------------------------------------------------------
def _fake_bwrap(tmp_path, monkeypatch, body, help_opts="--size --perms --die-with-parent "
                "--ro-bind-data --disable-userns"):
    """A `bwrap` first on PATH: answers --help with ``help_opts``, else runs ``body``."""
    d = tmp_path / "fakebin"
    d.mkdir(exist_ok=True)
    f = d / "bwrap"
    f.write_text(f"#!/bin/sh\nif [ \"$1\" = --help ]; then echo 'usage: bwrap {help_opts}'; "
                 f"exit 0; fi\n{body}\n")
    f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    monkeypatch.setattr(iso_mod, "_cache", {})


def _unavailable():
    with pytest.raises(SandboxUnavailable) as exc:
        iso_mod.resolve("bwrap", env_fallback=False)
    return exc.value


def test_skips_when_bwrap_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(iso_mod, "_cache", {})
    exc = _unavailable()
    assert exc.kind == iso_mod.BWRAP_MISSING
    with pytest.raises(pytest.skip.Exception, match=f"{SKIP_MARK}: bubblewrap missing"):
        sandbox_or_skip()


def test_skips_when_the_kernel_forbids_namespaces_and_names_them(tmp_path, monkeypatch):
    _fake_bwrap(tmp_path, monkeypatch,
                "echo 'bwrap: Creating new namespace failed: Operation not permitted' >&2; exit 1")
    exc = _unavailable()
    assert exc.kind == iso_mod.NAMESPACES_FORBIDDEN and "Operation not permitted" in str(exc)
    assert exc.namespaces == (("mount",) if os.geteuid() == 0 else ("user",))
    with pytest.raises(pytest.skip.Exception, match=f"{SKIP_MARK}: namespaces forbidden \\("):
        sandbox_or_skip()
    # only the network namespace refused: the message names it
    _fake_bwrap(tmp_path, monkeypatch, 'case " $* " in *" --unshare-net "*) '
                "echo 'bwrap: loopback: Failed RTM_NEWADDR: Operation not permitted' >&2; "
                "exit 1;; esac; exit 0")
    exc = _unavailable()
    assert (exc.kind, exc.namespaces) == (iso_mod.NAMESPACES_FORBIDDEN, ("net",))
    assert "failing: net" in str(exc) and "RTM_NEWADDR" in str(exc)
    assert skip_reason(exc).startswith(f"{SKIP_MARK}: namespaces forbidden (net): ")


def test_other_start_failures_fail_instead_of_skipping(tmp_path, monkeypatch):
    # namespaces work (the bare probe, ending in `true`, passes) but our sandbox does not start
    true = iso_mod._true_cmd()
    _fake_bwrap(tmp_path, monkeypatch, f'for a; do last=$a; done; [ "$last" = {true} ] && exit 0; '
                "echo \"bwrap: Can't make symlink at /tmp: File exists\" >&2; exit 1")
    exc = _unavailable()
    assert exc.kind == iso_mod.START_FAILED and "File exists" in str(exc)
    assert skip_reason(exc) is None
    with pytest.raises(SandboxUnavailable, match="not a missing feature of this machine"):
        sandbox_or_skip()
    _fake_bwrap(tmp_path, monkeypatch, "exit 1", help_opts="--size")  # too old: a setup fault
    assert _unavailable().kind == iso_mod.BWRAP_TOO_OLD
    with pytest.raises(SandboxUnavailable, match="too old"):
        sandbox_or_skip()


def test_the_old_tmp_symlink_clash_is_a_failure_not_a_skip(monkeypatch):
    """The real bwrap, given the mount order that broke under /tmp (a dir at /tmp before the
    /tmp -> /scratch symlink), reports a start failure, which fails the tests."""
    sandbox_or_skip()
    orig = iso_mod.bwrap_argv

    def clashing(*args, **kw):
        argv, payloads = orig(*args, **kw)
        i = next(i for i in range(len(argv)) if argv[i:i + 3] == ["--symlink", "/scratch", "/tmp"])
        return argv[:i] + ["--dir", "/tmp"] + argv[i:], payloads

    monkeypatch.setattr(iso_mod, "bwrap_argv", clashing)
    monkeypatch.setattr(iso_mod, "_cache", {})
    with pytest.raises(SandboxUnavailable, match="Can't make symlink at /tmp") as exc:
        sandbox_or_skip()
    assert exc.value.kind == iso_mod.START_FAILED


# -- .ci/run ----------------------------------------------------------------------------------
_FAKE_ATTACKS = textwrap.dedent("""
    import os
    import pytest
    from tools_sandbox.hostcheck import skip_reason
    from tools_sandbox.isolation import BWRAP_MISSING, SandboxUnavailable

    MODE = os.environ["FAKE_MODE"]
    pytestmark = pytest.mark.skipif(MODE == "unrelated-skip", reason="something else")

    def test_attack():
        if MODE == "sandbox-skip":
            pytest.skip(skip_reason(SandboxUnavailable("bwrap is not on PATH", BWRAP_MISSING)))
        assert MODE != "fail"
""")


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory):
    """.ci/run as it is, over a scripts/test.sh that runs one stand-in attack test module."""
    root = tmp_path_factory.mktemp("ci")
    (root / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "run", root / ".ci" / "run")
    (root / "scripts").mkdir()
    (root / "scripts" / "test.sh").write_text(
        '#!/usr/bin/env bash\ncd "$(dirname "$0")/.."\n'
        'exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"\n')
    (root / ".venv").symlink_to(sys.prefix)
    (root / "tests" / "unit").mkdir(parents=True)
    (root / "tests" / "unit" / "test_sandbox_attacks.py").write_text(_FAKE_ATTACKS)
    return root


@pytest.mark.parametrize("mode, opt_out, rc, says", [
    ("pass", None, 0, "sandbox tests ran (1 attack tests, none skipped)"),
    ("sandbox-skip", None, 1, "FAIL: 1 sandbox tests were skipped"),
    ("sandbox-skip", "1", 0, "RLCORE_ALLOW_SANDBOX_SKIP=1: opted out"),
    ("unrelated-skip", None, 1, "FAIL: no sandbox attack test ran"),
    ("fail", None, 1, "sandbox tests ran"),
    ("fail", "1", 1, "opted out"),
])
def test_ci_run_fails_unless_the_sandbox_tests_ran(fake_repo, mode, opt_out, rc, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("RLCORE_ALLOW_SANDBOX_SKIP", None)
    env.update(FAKE_MODE=mode, PYTHONPATH=str(REPO))
    if opt_out:
        env["RLCORE_ALLOW_SANDBOX_SKIP"] = opt_out
    proc = subprocess.run(["bash", str(fake_repo / ".ci" / "run")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == rc and says in proc.stdout, proc.stdout + proc.stderr
    if mode == "sandbox-skip":  # -rs: the reason is in the log too
        assert "SKIPPED" in proc.stdout and f"{SKIP_MARK}: bubblewrap missing" in proc.stdout
