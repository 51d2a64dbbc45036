"""Resource limits of one sandbox, and the cgroup (v1 or v2) that enforces them.

cgroups are preferred because they count the whole sandbox (all its processes and threads)
and nothing else: a pids cgroup stops fork and thread bombs without the per-uid, system-wide
semantics of RLIMIT_NPROC, and a memory cgroup caps RSS without RLIMIT_AS's side effects
(glibc reserves 64 MiB of address space per thread arena, so a 1 GiB RLIMIT_AS allows only
~14 threads). rlimits stay as the fallback and as per-process backstops.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_V1_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. One sandbox serves one session or one one-shot call."""

    memory_mb: int = 512  # RAM of the whole sandbox (tmpfs scratch included), cgroup
    max_procs: int = 64  # processes + threads inside the sandbox (pids cgroup)
    cpu_s: float | None = None  # CPU seconds per call; None: timeout_s + 1 (RLIMIT_CPU)
    session_cpu_s: int = 3600  # CPU seconds over a sandbox's whole life (hard RLIMIT_CPU)
    cpus: float = 1.0  # CPU bandwidth (cgroup cpu quota); 0 disables
    scratch_mb: int = 64  # size of the writable tmpfs scratch dir (also RLIMIT_FSIZE)
    shm_mb: int = 16  # size of /dev/shm
    max_output_bytes: int = 64 * 1024  # per stream per call; the rest is dropped with a marker
    max_open_files: int = 256  # RLIMIT_NOFILE

    def rlimits(self, have_memory_cgroup: bool, have_pids_cgroup: bool, own_uid: bool) -> dict:
        """RLIMIT_* for the driver (inherited by everything it starts).

        ``own_uid``: the sandbox's uid counts only its own processes for RLIMIT_NPROC (a
        random uid of its own, or a user namespace: per-namespace counts since Linux 5.14).
        """
        out = {
            "RLIMIT_CORE": 0,
            "RLIMIT_FSIZE": self.scratch_mb << 20,
            "RLIMIT_NOFILE": self.max_open_files,
            "RLIMIT_CPU": int(self.session_cpu_s),
            "RLIMIT_MSGQUEUE": 0,
        }
        if not have_memory_cgroup:  # coarse fallback: address space, not RSS
            out["RLIMIT_AS"] = max(self.memory_mb, 256) << 20
        if own_uid:  # a backstop behind the pids cgroup; never on a shared uid
            out["RLIMIT_NPROC"] = self.max_procs + 4
        return out


def _own_cgroup_paths() -> dict[str, str]:
    """controller -> this process's cgroup path ("" key for the v2 unified hierarchy)."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def _remove_stale(base: Path) -> None:
    """Empty sandbox cgroups left by processes that died without cleaning up."""
    for parent in base.glob("rlcore-sandbox-*"):
        pid = parent.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for d in [*parent.glob("sbx-*"), parent]:
            try:
                d.rmdir()
            except OSError:
                pass


def cpu_weight(v2: bool) -> str:
    """Our own nice level as a cgroup CPU weight, so a sandbox is no greedier than its caller
    (a cpu cgroup competes as one entity: at the default weight it would be nice 0)."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    return str(max(1, round(100 / 1.25 ** nice))) if v2 else str(max(2, round(1024 / 1.25 ** nice)))


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


V2_WANTED = ("pids", "memory", "cpu")


def v2_host_cgroup(root: Path, own: str) -> Path:
    """The cgroup v2 directory whose children hold our sandboxes.

    Our own cgroup first. But a cgroup holding processes (ours) may not hand controllers to
    children (the "no internal processes" rule), so when it does not, take the nearest writable
    ancestor that does: sandboxes then sit beside our cgroup, still under every limit set above
    it (a VM or container as root: its processes live in a leaf, the controllers one level up).
    """
    def enabled(d: Path) -> set[str]:
        try:
            return set((d / "cgroup.subtree_control").read_text().split())
        except OSError:
            return set()

    essential = {"pids", "memory"}  # what contains fork bombs and memory blow-ups; cpu is a bonus
    base = root / own.lstrip("/")
    best, best_count = base, 0
    for anc in (base, *base.parents):
        if not (anc == root or root in anc.parents):
            break
        have = enabled(anc)
        if anc != base and not _writable_dir(anc):
            continue
        if essential <= have:
            return anc
        if len(have & set(V2_WANTED)) > best_count:
            best, best_count = anc, len(have & set(V2_WANTED))
    return best


class CgroupSetup:
    """Finds where this process can create child cgroups, per controller (probed once)."""

    _lock = threading.Lock()
    _cached: "CgroupSetup | None" = None

    def __init__(self):
        self.version = None
        self.parents: dict[str, Path] = {}  # controller -> parent dir for our sandboxes
        self.problems: list[str] = []
        try:
            own = _own_cgroup_paths()
        except OSError as exc:
            self.problems.append(f"cannot read /proc/self/cgroup: {exc}")
            return
        v2_root = _V1_ROOT if (_V1_ROOT / "cgroup.controllers").exists() else None
        if v2_root is None:
            for ctrl in ("pids", "memory", "cpu"):
                base = _V1_ROOT / ctrl
                if ctrl in own and _writable_dir(base / own[ctrl].lstrip("/")):
                    parent = base / own[ctrl].lstrip("/") / f"rlcore-sandbox-{os.getpid()}"
                    _remove_stale(parent.parent)
                    try:
                        parent.mkdir(exist_ok=True)
                        if ctrl == "cpu":
                            (parent / "cpu.shares").write_text(cpu_weight(False))
                        self.parents[ctrl] = parent
                    except OSError as exc:
                        self.problems.append(f"{ctrl}: {exc}")
                else:
                    self.problems.append(f"cgroup v1 '{ctrl}' controller not writable")
            self.version = 1 if self.parents else None
            return
        base = v2_host_cgroup(v2_root, own.get("", "/"))
        parent = base / f"rlcore-sandbox-{os.getpid()}"
        _remove_stale(base)
        try:
            parent.mkdir(exist_ok=True)
            avail = (parent / "cgroup.controllers").read_text().split()
            wanted = [c for c in V2_WANTED if c in avail]
            (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
            self.parents = {c: parent for c in wanted}
            if "cpu" in wanted:
                (parent / "cpu.weight").write_text(cpu_weight(True))
            self.version = 2
            missing = {"pids", "memory", "cpu"} - set(wanted)
            self.problems += [f"cgroup v2 controller '{c}' not delegated" for c in sorted(missing)]
        except OSError as exc:
            self.problems.append(f"cgroup v2 at {base}: {exc}")

    def remove_parents(self) -> None:
        """At exit: our per-process parent dirs (children are removed by their sandboxes)."""
        for parent in set(self.parents.values()):
            try:
                parent.rmdir()
            except OSError:
                pass

    @classmethod
    def get(cls) -> "CgroupSetup":
        with cls._lock:
            if cls._cached is None:
                cls._cached = cls()
            return cls._cached

    def create(self, name: str, limits: Limits) -> "Cgroup | None":
        if not self.parents:
            return None
        return Cgroup(self, name, limits)


class Cgroup:
    """The cgroup(s) of one sandbox: limits, OOM/pids events, kill-all, removal."""

    def __init__(self, setup: CgroupSetup, name: str, limits: Limits):
        self.v2 = setup.version == 2
        self.dirs: dict[str, Path] = {}
        for ctrl, parent in setup.parents.items():
            d = parent / name
            if d not in self.dirs.values():
                d.mkdir()
            self.dirs[ctrl] = d
        mem = limits.memory_mb << 20
        self._set("pids", "pids.max", str(limits.max_procs))
        if self.v2:
            self._set("memory", "memory.max", str(mem))
            self._set("memory", "memory.swap.max", "0", optional=True)
            self._set("cpu", "cpu.weight", cpu_weight(True), optional=True)
            if limits.cpus > 0:
                self._set("cpu", "cpu.max", f"{int(limits.cpus * 100000)} 100000", optional=True)
        else:
            self._set("memory", "memory.limit_in_bytes", str(mem))
            self._set("memory", "memory.memsw.limit_in_bytes", str(mem), optional=True)
            self._set("cpu", "cpu.shares", cpu_weight(False), optional=True)
            if limits.cpus > 0:
                self._set("cpu", "cpu.cfs_period_us", "100000", optional=True)
                self._set("cpu", "cpu.cfs_quota_us", str(int(limits.cpus * 100000)), optional=True)

    def _set(self, ctrl: str, fname: str, value: str, optional: bool = False) -> None:
        if ctrl not in self.dirs:
            return
        try:
            (self.dirs[ctrl] / fname).write_text(value)
        except OSError:
            if not optional:
                raise

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def _read(self, ctrl: str, fname: str) -> str:
        try:
            return (self.dirs[ctrl] / fname).read_text()
        except (OSError, KeyError):
            return ""

    def oom_killed(self) -> bool:
        text = self._read("memory", "memory.events" if self.v2 else "memory.oom_control")
        for line in text.splitlines():
            key, _, val = line.partition(" ")
            if key == "oom_kill" and val.strip() not in ("", "0"):
                return True
        return False

    def pids_limit_hits(self) -> int:
        """How many forks/clones the pids limit has refused so far."""
        for line in self._read("pids", "pids.events").splitlines():
            key, _, val = line.partition(" ")
            if key == "max" and val.strip().isdigit():
                return int(val)
        return 0

    def pids(self) -> set[int]:
        out = set()
        for f in self.procs_files:
            try:
                out.update(int(x) for x in Path(f).read_text().split())
            except OSError:
                pass
        return out

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup; pidfds make a recycled pid safe to skip."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    if pid in self.pids():  # still ours: the pidfd pins this very process
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.01)
        return not self.pids()

    def remove(self) -> None:
        for d in set(self.dirs.values()):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still has (exiting) members
                    time.sleep(0.02)
