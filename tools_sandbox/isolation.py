"""What isolation this machine gives, and the bubblewrap command line of one sandbox.

Two ways to run bwrap:
- as root ("privileged"): bwrap builds mount/pid/net/ipc/uts namespaces without a user
  namespace, and the in-sandbox driver drops to a random high uid of its own (no capabilities,
  no_new_privs, empty bounding set). The uid owns no host file and no host process, and being
  the sandbox's alone, RLIMIT_NPROC on it counts this sandbox only.
- as a normal user: bwrap also unshares the user namespace (uid 65534 inside, further user
  namespaces disabled); this needs unprivileged user namespaces.

Without a working bwrap we refuse (SandboxUnavailable), unless the caller opted into running
without isolation by name (``isolation="none_UNSAFE"``, or the env var below when bwrap is
missing).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

UNSAFE = "none_UNSAFE"
UNSAFE_ENV = "RLCORE_SANDBOX_UNSAFE_NO_ISOLATION"
DRIVER = Path(__file__).with_name("_driver.py")
DRIVER_IN_SANDBOX = "/.rlcore/driver.py"
SCRATCH = "/scratch"
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
              "alternatives")
_INSTALL_HINT = ("install it: `apt-get install bubblewrap` (Debian/Ubuntu), `dnf install "
                 "bubblewrap` (Fedora), or `bash scripts/setup.sh` as root")
_NS_HINT = ("bwrap could not create namespaces. As a normal user this needs unprivileged user "
            "namespaces: sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces>0; "
            "on Ubuntu >= 23.10 also kernel.apparmor_restrict_unprivileged_userns=0 or an "
            "AppArmor profile for bwrap. Inside Docker: --security-opt seccomp=unconfined "
            "--security-opt apparmor=unconfined (or run as root with CAP_SYS_ADMIN).")


class SandboxUnavailable(RuntimeError):
    """The isolation the sandbox needs is missing on this machine; the message says what."""


@dataclass
class PythonInfo:
    executable: str
    prefixes: list[str]  # host dirs the interpreter and its site-packages live in


@dataclass
class Isolation:
    """What a sandbox on this machine gets: decided once per interpreter, then cached."""

    mode: str  # "bwrap" or UNSAFE
    python: PythonInfo
    bwrap: str | None = None
    privileged: bool = False  # bwrap runs as root, driver drops to its own uid
    disable_userns: bool = False
    notes: list[str] = field(default_factory=list)


_lock = threading.Lock()
_cache: dict[tuple, Isolation] = {}


def python_info(python: str | None) -> PythonInfo:
    exe = python or sys.executable
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        out = subprocess.run([exe, "-I", "-S", "-c", "import sys, json; print(json.dumps("
                              "[sys.prefix, sys.base_prefix, sys.exec_prefix]))"],
                             capture_output=True, text=True, timeout=60, check=True)
        prefixes = json.loads(out.stdout)
    prefixes.append(os.path.dirname(os.path.realpath(exe)))
    real = []
    for p in prefixes:
        for q in (os.path.abspath(p), os.path.realpath(p)):
            if q not in real:
                real.append(q)
    return PythonInfo(exe, real)


def resolve(isolation: str = "bwrap", python: str | None = None) -> Isolation:
    """Check (once) that sandboxes can start here; SandboxUnavailable says what is missing."""
    if isolation not in ("bwrap", UNSAFE, "auto"):
        raise ValueError(f"isolation must be 'bwrap' or '{UNSAFE}', got {isolation!r}")
    key = (isolation, python, os.environ.get(UNSAFE_ENV, ""))
    with _lock:
        if key not in _cache:
            _cache[key] = _resolve(isolation, python)
        iso = _cache[key]
    if iso.mode == UNSAFE:
        warnings.warn("tools_sandbox: running model code WITHOUT ISOLATION (none_UNSAFE): it can "
                      "read and write your files, use the network and kill your processes",
                      RuntimeWarning, stacklevel=3)
    return iso


def _resolve(isolation: str, python: str | None) -> Isolation:
    info = python_info(python)
    if isolation == UNSAFE:
        return Isolation(UNSAFE, info, notes=["no isolation: explicitly requested"])
    try:
        return _probe_bwrap(info)
    except SandboxUnavailable as exc:
        if os.environ.get(UNSAFE_ENV) == "1":
            return Isolation(UNSAFE, info, notes=[f"{UNSAFE_ENV}=1 and bwrap unusable: {exc}"])
        raise


def _probe_bwrap(info: PythonInfo) -> Isolation:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not on PATH: {_INSTALL_HINT}. To run "
                                 f"without any isolation (unsafe) pass isolation='{UNSAFE}' or "
                                 f"set {UNSAFE_ENV}=1.")
    helptext = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    missing = [o for o in ("--size", "--perms", "--die-with-parent", "--ro-bind-data")
               if o not in helptext]
    if missing:
        raise SandboxUnavailable(f"{bwrap} is too old (no {', '.join(missing)}): need "
                                 f"bubblewrap >= 0.6; {_INSTALL_HINT}")
    iso = Isolation("bwrap", info, bwrap=bwrap, privileged=os.geteuid() == 0,
                    disable_userns="--disable-userns" in helptext)
    uid = random_uid() if iso.privileged else None
    argv, payloads = bwrap_argv(iso, uid, scratch_mb=1, shm_mb=1)
    check = ("import os, sys, json; print(json.dumps([os.getuid(), sys.version_info[:2]]))")
    argv = argv[:argv.index(info.executable)] + [info.executable, "-I", "-S", "-c", check]
    if iso.privileged:  # the probe checks the drop works, as the driver will do it
        argv[-1] = (f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); "
                    + check)
    proc = run_with_payloads(argv, payloads, timeout=60)
    if proc.returncode != 0:
        err = proc.stderr.strip()[-2000:]
        hint = _NS_HINT if ("namespace" in err or "uid map" in err or "Operation not permitted"
                            in err) else "see bwrap's message"
        raise SandboxUnavailable(f"bubblewrap is installed but the sandbox did not start "
                                 f"(exit {proc.returncode}): {err!r}. {hint}")
    iso.notes.append("bwrap as root: driver drops to its own uid" if iso.privileged else
                     "bwrap in a user namespace (uid 65534 inside)")
    return iso


UID_BASE, UID_SPAN = 0x70000000, 1 << 24


def random_uid() -> int:
    """A high uid no host user has; random so concurrent pools rarely share one."""
    return UID_BASE + random.SystemRandom().randrange(UID_SPAN)


def run_with_payloads(argv, payloads, timeout):
    fds = _payload_fds(payloads)
    try:
        return subprocess.run(_subst(argv, fds), capture_output=True, text=True,
                              timeout=timeout, pass_fds=list(fds.values()))
    finally:
        for fd in fds.values():
            os.close(fd)


def _payload_fds(payloads: dict[str, bytes]) -> dict[str, int]:
    """Each payload in a pipe, read by bwrap's --ro-bind-data (small: fits the pipe buffer)."""
    fds = {}
    for key, data in payloads.items():
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        fds[key] = r
    return fds


def _subst(argv, fds):
    return [str(fds[a[5:]]) if a.startswith("@@fd:") else a for a in argv]


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def bwrap_argv(iso: Isolation, uid: int | None, scratch_mb: int, shm_mb: int,
               ro_binds: tuple[str, ...] = ()) -> tuple[list[str], dict[str, bytes]]:
    """bwrap command line (ending with the driver's python) and its --ro-bind-data payloads.

    Nothing of the host is visible but the system dirs, a few /etc files, the interpreter's
    prefixes and ``ro_binds``, all read-only; /scratch (= cwd, HOME, TMPDIR, /tmp) and
    /dev/shm are size-capped tmpfs private to this sandbox.
    """
    a = [iso.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
         "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    inside_uid = uid
    if not iso.privileged:
        inside_uid = 65534
        a += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
        if iso.disable_userns:
            a.append("--disable-userns")
    for name in _SYSTEM_DIRS:
        p = "/" + name
        if os.path.islink(p):
            a += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            a += ["--ro-bind", p, p]
    a += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700: unreadable by uid
    for name in _ETC_FILES:
        if os.path.exists("/etc/" + name):
            a += ["--ro-bind", "/etc/" + name, "/etc/" + name]
    payloads = {
        "passwd": f"root:x:0:0::/:/bin/false\nsandbox:x:{inside_uid}:{inside_uid}::{SCRATCH}:"
                  f"/bin/sh\n".encode(),
        "group": f"root:x:0:\nsandbox:x:{inside_uid}:\n".encode(),
    }
    a += ["--perms", "0444", "--ro-bind-data", "@@fd:passwd", "/etc/passwd",
          "--perms", "0444", "--ro-bind-data", "@@fd:group", "/etc/group"]
    bound: list[str] = ["/" + n for n in _SYSTEM_DIRS] + ["/etc"]
    made: set[str] = set(bound)
    targets = [(p, p) for p in iso.python.prefixes] + [
        (b, b) if isinstance(b, str) else tuple(b) for b in ro_binds]
    targets.append((str(DRIVER), DRIVER_IN_SANDBOX))
    for src, dst in sorted(targets, key=lambda t: len(t[1])):  # parents before children
        real = os.path.realpath(src)
        if not os.path.exists(real) or any(dst == b or dst.startswith(b + "/") for b in bound):
            continue
        for anc in _ancestors(dst):
            if anc not in made:
                a += ["--perms", "0755", "--dir", anc]
                made.add(anc)
        a += ["--ro-bind", real, dst]
        bound.append(dst)
    a += ["--proc", "/proc", "--dev", "/dev",
          "--perms", "1777", "--size", str(max(shm_mb, 1) << 20), "--tmpfs", "/dev/shm",
          "--perms", "1777", "--size", str(max(scratch_mb, 1) << 20), "--tmpfs", SCRATCH,
          "--symlink", SCRATCH, "/tmp", "--remount-ro", "/dev", "--remount-ro", "/",
          "--chdir", SCRATCH, "--clearenv"]  # in a user namespace "/" would be ours: make it ro
    env = {"HOME": SCRATCH, "TMPDIR": SCRATCH, "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k, v in env.items():
        a += ["--setenv", k, v]
    a.append(iso.python.executable)
    return a, payloads
