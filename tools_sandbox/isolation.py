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
missing). Its ``kind`` tells what the machine lacks (bwrap, or namespaces the kernel refuses)
from a sandbox of ours that failed to start where both work.
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


BWRAP_MISSING = "bubblewrap missing"
BWRAP_TOO_OLD = "bubblewrap too old"
NAMESPACES_FORBIDDEN = "namespaces forbidden"
START_FAILED = "sandbox start failed"
# What the machine lacks (as opposed to a sandbox of ours that fails to start on a machine that
# has everything): only these may make a test suite skip the sandbox tests.
MACHINE_LACKS = (BWRAP_MISSING, NAMESPACES_FORBIDDEN)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start here; the message says why and ``kind`` which case it is.

    ``kind``: BWRAP_MISSING (not on PATH), BWRAP_TOO_OLD, NAMESPACES_FORBIDDEN (the kernel, or a
    container's seccomp/AppArmor, refuses a namespace bwrap needs: ``namespaces`` names which),
    START_FAILED (bwrap and its namespaces work, yet the sandbox did not start: a bug to fix,
    not a missing feature of the machine).
    """

    def __init__(self, message: str, kind: str = START_FAILED,
                 namespaces: tuple[str, ...] = ()):
        super().__init__(message)
        self.kind = kind
        self.namespaces = tuple(namespaces)


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
    if os.sep not in exe:
        exe = shutil.which(exe) or exe
    exe = os.path.abspath(exe)
    # Not realpath: every venv's python links to the same base binary, yet each venv has its
    # own prefix (and site-packages), which only that venv's interpreter can tell.
    if python is None or exe == os.path.abspath(sys.executable):
        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        # Not -S: a venv's sys.prefix is set by site (pyvenv.cfg), as the driver does too.
        out = subprocess.run([exe, "-I", "-c", "import sys, json; print(json.dumps("
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


def resolve(isolation: str = "bwrap", python: str | None = None, *,
            env_fallback: bool = True) -> Isolation:
    """Check (once) that sandboxes can start here; SandboxUnavailable says what is missing.

    ``env_fallback=False`` ignores UNSAFE_ENV (tests: never run attacks unisolated).
    """
    if isolation not in ("bwrap", UNSAFE, "auto"):
        raise ValueError(f"isolation must be 'bwrap' or '{UNSAFE}', got {isolation!r}")
    unsafe_env = os.environ.get(UNSAFE_ENV, "") if env_fallback else ""
    key = (isolation, python, unsafe_env)
    with _lock:
        if key not in _cache:
            _cache[key] = _resolve(isolation, python, unsafe_env == "1")
        iso = _cache[key]
    if iso.mode == UNSAFE:
        warnings.warn("tools_sandbox: running model code WITHOUT ISOLATION (none_UNSAFE): it can "
                      "read and write your files, use the network and kill your processes",
                      RuntimeWarning, stacklevel=3)
    return iso


def _resolve(isolation: str, python: str | None, unsafe_env: bool) -> Isolation:
    info = python_info(python)
    if isolation == UNSAFE:
        return Isolation(UNSAFE, info, notes=["no isolation: explicitly requested"])
    try:
        return _probe_bwrap(info)
    except SandboxUnavailable as exc:
        if unsafe_env:
            return Isolation(UNSAFE, info, notes=[f"{UNSAFE_ENV}=1 and bwrap unusable: {exc}"])
        raise


def _probe_bwrap(info: PythonInfo) -> Isolation:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(f"bubblewrap (bwrap) is not on PATH: {_INSTALL_HINT}. To run "
                                 f"without any isolation (unsafe) pass isolation='{UNSAFE}' or "
                                 f"set {UNSAFE_ENV}=1.", BWRAP_MISSING)
    helptext = subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout
    missing = [o for o in ("--size", "--perms", "--die-with-parent", "--ro-bind-data")
               if o not in helptext]
    if missing:
        raise SandboxUnavailable(f"{bwrap} is too old (no {', '.join(missing)}): need "
                                 f"bubblewrap >= 0.6; {_INSTALL_HINT}", BWRAP_TOO_OLD)
    iso = Isolation("bwrap", info, bwrap=bwrap, privileged=os.geteuid() == 0,
                    disable_userns="--disable-userns" in helptext)
    _probe_namespaces(iso)  # what the machine allows, apart from our own mounts
    uid = random_uid() if iso.privileged else None
    argv, payloads = bwrap_argv(iso, uid, scratch_mb=1, shm_mb=1)
    check = ("import os, sys, json; print(json.dumps([os.getuid(), sys.version_info[:2]]))")
    argv = argv[:-1] + [info.executable, "-I", "-S", "-c", check]
    if iso.privileged:  # the probe checks the drop works, as the driver will do it
        argv[-1] = (f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); "
                    + check)
    proc = run_with_payloads(argv, payloads, timeout=60)
    if proc.returncode != 0:
        err = proc.stderr.strip()[-2000:]
        raise SandboxUnavailable(
            f"bubblewrap works here (a bare sandbox with the same namespaces started), but this "
            f"sandbox did not (exit {proc.returncode}): {err!r}. Interpreter "
            f"{info.executable!r}, host dirs bound: {info.prefixes}. This is a fault in the "
            f"sandbox set-up (tools_sandbox/isolation.py), not a missing feature of this "
            f"machine.", START_FAILED)
    iso.notes.append("bwrap as root: driver drops to its own uid" if iso.privileged else
                     "bwrap in a user namespace (uid 65534 inside)")
    return iso


def _true_cmd() -> str:
    return shutil.which("true", path="/usr/bin:/bin") or "/bin/true"


def _bare_run(argv) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {exc.timeout} s")


def _probe_namespaces(iso: Isolation) -> None:
    """Start a bare bwrap (our namespaces, the system dirs, /proc; none of our other mounts).

    If that fails the kernel (or a container's seccomp/AppArmor policy) refuses what bwrap
    needs: NAMESPACES_FORBIDDEN, naming the namespaces that fail on their own and bwrap's
    (the kernel's) error. Anything failing after this passes is ours (START_FAILED).
    """
    def bare(ns_args, proc=True):
        argv = [iso.bwrap] + ns_args + _system_args() + (["--proc", "/proc"] if proc else [])
        return _bare_run(argv + [_true_cmd()])

    res = bare(_namespace_args(iso))
    if res.returncode == 0:
        return
    err = res.stderr.strip()[-1000:] or f"exit {res.returncode}, no message"
    user = [] if iso.privileged else ["--unshare-user"]
    if bare(user, proc=False).returncode != 0:  # bwrap always makes a mount namespace
        names = ["user"] if user else ["mount"]
    else:
        names = [ns for ns in ("pid", "net", "ipc", "uts")
                 if bare(user + [f"--unshare-{ns}"], proc=False).returncode != 0]
        if "pid" not in names and bare(user + ["--unshare-pid"]).returncode != 0:
            names.append("pid (mounting its /proc)")
    which = ", ".join(names) if names else "each works alone, not all together"
    raise SandboxUnavailable(
        f"the kernel refuses the namespaces bubblewrap needs (failing: {which}); "
        f"{iso.bwrap} said: {err!r}. {_NS_HINT}", NAMESPACES_FORBIDDEN,
        tuple(n.split()[0] for n in names))


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


def _namespace_args(iso: Isolation) -> list[str]:
    a = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
         "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if not iso.privileged:
        a += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
        if iso.disable_userns:
            a.append("--disable-userns")
    return a


def _system_args() -> list[str]:
    a = []
    for name in _SYSTEM_DIRS:
        p = "/" + name
        if os.path.islink(p):
            a += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            a += ["--ro-bind", p, p]
    return a


# Sandbox paths bwrap makes itself; a host dir is bound at or under none of these but /dev/shm
# and SCRATCH (where /tmp leads): those are mounted first, host dirs under them go on top.
_OWN_MOUNTS = ("/", "/proc", "/dev", "/dev/shm", SCRATCH, "/tmp", "/etc", DRIVER_IN_SANDBOX)


def sandbox_path(path: str) -> str:
    """Where the host path ``path`` is bound in the sandbox: the same path, except that
    /tmp is a symlink to SCRATCH there, so /tmp/x is bound at SCRATCH/x (and is reachable as
    /tmp/x, the path the host knows it by)."""
    path = os.path.normpath(path)
    if path == "/tmp" or path.startswith("/tmp/"):
        return SCRATCH + path[len("/tmp"):]
    return path


def bwrap_argv(iso: Isolation, uid: int | None, scratch_mb: int, shm_mb: int,
               ro_binds: tuple[str, ...] = ()) -> tuple[list[str], dict[str, bytes]]:
    """bwrap command line (ending with the driver's python) and its --ro-bind-data payloads.

    Nothing of the host is visible but the system dirs, a few /etc files, the interpreter's
    prefixes and ``ro_binds``, all read-only; /scratch (= cwd, HOME, TMPDIR, /tmp) and
    /dev/shm are size-capped tmpfs private to this sandbox.

    Order matters: bwrap applies the options in turn, and a mount hides what an earlier one put
    below it, while a symlink cannot replace a directory. So /proc, /dev, the tmpfs and the
    /tmp -> /scratch symlink come first, then the host dirs, parents before children. A host
    dir under /tmp (a venv made there, a project checked out there) or under /scratch is
    then bound inside the scratch tmpfs, on top of it, read-only; it shows up in /scratch's
    listing, a read-only dir among the sandbox's own files.
    """
    a = [iso.bwrap] + _namespace_args(iso) + _system_args()
    inside_uid = uid if iso.privileged else 65534
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
    a += ["--proc", "/proc", "--dev", "/dev",
          "--perms", "1777", "--size", str(max(shm_mb, 1) << 20), "--tmpfs", "/dev/shm",
          "--perms", "1777", "--size", str(max(scratch_mb, 1) << 20), "--tmpfs", SCRATCH,
          "--symlink", SCRATCH, "/tmp"]
    bound: list[str] = ["/" + n for n in _SYSTEM_DIRS] + ["/etc"]
    made: set[str] = {"/etc", "/proc", "/dev", "/dev/shm", SCRATCH}
    targets = [(p, p) for p in iso.python.prefixes] + [
        (b, b) if isinstance(b, str) else tuple(b) for b in ro_binds]
    targets = [(src, sandbox_path(dst)) for src, dst in targets]
    for src, dst in targets:
        if dst in _OWN_MOUNTS or (dst.startswith(("/proc/", "/dev/"))
                                  and not dst.startswith("/dev/shm/")):
            raise ValueError(f"cannot bind {src!r} at {dst!r}: the sandbox mounts its own "
                             f"filesystem there")
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
    a += ["--remount-ro", "/dev", "--remount-ro", "/",  # in a user namespace "/" would be ours
          "--chdir", SCRATCH, "--clearenv"]
    env = {"HOME": SCRATCH, "TMPDIR": SCRATCH, "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k, v in env.items():
        a += ["--setenv", k, v]
    a.append(iso.python.executable)
    return a, payloads
