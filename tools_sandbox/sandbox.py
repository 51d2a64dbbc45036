"""One sandboxed Python interpreter (bwrap + cgroup + rlimits + the in-sandbox driver).

A ``Sandbox`` is one session's state: names persist across ``run`` calls; an exception keeps
them; a timeout or a kill destroys the sandbox (the whole pid namespace dies with it) and the
next ``run`` starts a fresh one. ``close()`` kills everything that was started inside.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import Future

from tools_sandbox import isolation as iso_mod
from tools_sandbox.limits import CgroupSetup, Limits
from tools_sandbox.result import ERROR, KILLED, OK, TIMEOUT, RunResult, truncation_marker

_HDR = struct.Struct(">I")
_GRACE_S = 0.5  # after timeout_s the driver has this long to report before a hard kill
_EOF, _LATE, _BAD = "eof", "late", "bad"
_CG_WRAPPER = 'for f in $RLCORE_SANDBOX_CG; do echo $$ > "$f" || exit 125; done; exec "$@"'


class SandboxError(RuntimeError):
    """A sandbox failed to start (the isolation exists but this start went wrong)."""


class _Spawner:
    """Starts every sandbox from one long-lived thread.

    bwrap's --die-with-parent uses PR_SET_PDEATHSIG, which fires when the *thread* that forked
    it exits; spawning from short-lived caller threads would kill live sandboxes.
    """

    def __init__(self):
        self._q: queue.Queue = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()

    def popen(self, argv, **kw) -> subprocess.Popen:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandbox-spawner",
                                                daemon=True)
                self._thread.start()
        fut: Future = Future()
        self._q.put((fut, argv, kw))
        return fut.result()

    def _loop(self):
        while True:
            fut, argv, kw = self._q.get()
            try:
                fut.set_result(subprocess.Popen(argv, **kw))
            except BaseException as exc:
                fut.set_exception(exc)


class _Reaper:
    """Waits for killed sandboxes and removes their cgroups off the caller's path."""

    def __init__(self):
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, name="sandbox-reaper", daemon=True).start()

    def put(self, item):
        self._q.put(item)

    def _loop(self):
        while True:
            _finish(*self._q.get())


def _finish(proc, cg, tmpdir):
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for f in (proc.stdin, proc.stdout, proc.stderr):
        try:
            f.close()
        except (OSError, AttributeError):
            pass
    if cg is not None:
        cg.kill_all()
        cg.remove()
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


_spawner = _Spawner()
_reaper = None
_reaper_lock = threading.Lock()


def _reaper_queue() -> "_Reaper":
    global _reaper
    with _reaper_lock:
        if _reaper is None:
            _reaper = _Reaper()
        return _reaper
_live: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()
_issued_uids: set[int] = set()  # every uid this process gave a sandbox: what leak checks look for


def _at_exit():
    for sb in list(_live):
        sb.close(wait=True)
    if CgroupSetup._cached is not None:
        CgroupSetup._cached.remove_parents()


atexit.register(_at_exit)


class Sandbox:
    """One sandboxed interpreter. ``run`` is serialised; use one Sandbox per session."""

    def __init__(self, limits: Limits | None = None, *, isolation: str = "bwrap",
                 python: str | None = None, ro_binds: tuple = (), start_timeout_s: float = 30.0):
        self.limits = limits or Limits()
        self.iso = iso_mod.resolve(isolation, python)
        self.ro_binds = tuple(ro_binds)
        self.start_timeout_s = start_timeout_s
        self._lock = threading.RLock()  # serialises start/run
        self._state = threading.Lock()  # guards the swap in close(), which must not wait for run
        self._proc: subprocess.Popen | None = None
        self._cg = None
        self._tmpdir = None
        self._buf = bytearray()
        self._ready = False
        self._pids_seen = 0  # pids-limit events already reported
        self.uid = None

    # -- life cycle ------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def start(self, wait: bool = True) -> "Sandbox":
        """Spawn the sandbox; with ``wait`` block until its driver is ready."""
        with self._lock:
            if self._proc is None:
                self._spawn()
            if wait:
                self.wait_ready()
        return self

    def _spawn(self):
        lim, iso = self.limits, self.iso
        self._buf, self._ready, self._pids_seen = bytearray(), False, 0
        self._cg = CgroupSetup.get().create(f"sbx-{uuid.uuid4().hex[:12]}", lim)
        dirs = self._cg.dirs if self._cg else {}
        privileged = iso.mode == "bwrap" and iso.privileged
        self.uid = iso_mod.random_uid() if privileged else None
        if self.uid is not None:
            _issued_uids.add(self.uid)
        cfg = {"uid": self.uid, "gid": self.uid, "max_output": lim.max_output_bytes,
               "rlimits": lim.rlimits("memory" in dirs, "pids" in dirs, iso.mode == "bwrap")}
        env, cwd, payloads = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, None, {}
        if iso.mode == "bwrap":
            argv, payloads = iso_mod.bwrap_argv(iso, self.uid, lim.scratch_mb, lim.shm_mb,
                                                self.ro_binds)
            argv += ["-I", "-S", "-B", iso_mod.DRIVER_IN_SANDBOX, json.dumps(cfg)]
        else:  # none_UNSAFE: the driver runs as us, in a temp dir, in its own session
            self._tmpdir = cwd = tempfile.mkdtemp(prefix="rlcore-unsafe-sandbox-")
            env.update(HOME=cwd, TMPDIR=cwd, LANG="C.UTF-8")
            argv = [iso.python.executable, "-I", "-S", "-B", str(iso_mod.DRIVER), json.dumps(cfg)]
        if self._cg is not None:
            argv = ["/bin/sh", "-c", _CG_WRAPPER, "sh"] + argv
            env["RLCORE_SANDBOX_CG"] = " ".join(self._cg.procs_files)
        fds = iso_mod._payload_fds(payloads)
        try:
            self._proc = _spawner.popen(
                iso_mod._subst(argv, fds), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, bufsize=0, pass_fds=list(fds.values()), env=env,
                cwd=cwd, start_new_session=True)
        except BaseException:
            if self._cg is not None:
                self._cg.remove()
            self._cg = None
            raise
        finally:
            for fd in fds.values():
                os.close(fd)
        os.set_blocking(self._proc.stdin.fileno(), False)
        _live.add(self)

    def wait_ready(self):
        proc = self._proc
        if self._ready or proc is None:
            if proc is None:
                raise SandboxError("sandbox is closed")
            return
        msg = self._recv(proc, time.monotonic() + self.start_timeout_s)
        if not isinstance(msg, dict) or not msg.get("ready"):
            err = self._stderr_tail(proc)
            self.close()
            raise SandboxError(f"sandbox did not start ({msg if isinstance(msg, str) else msg!r})"
                               f": {err}")
        self._ready = True

    def close(self, wait: bool = False):
        """Kill the sandbox and everything in it (idempotent)."""
        with self._state:
            proc, cg, tmp = self._proc, self._cg, self._tmpdir
            self._proc = self._cg = self._tmpdir = None
        if proc is None:
            return
        _live.discard(self)
        try:  # bwrap's pid-1 has PDEATHSIG=SIGKILL: the pid namespace dies with it
            os.killpg(proc.pid, signal.SIGKILL) if self.iso.mode != "bwrap" else proc.kill()
        except OSError:
            pass
        if cg is not None and self.iso.mode != "bwrap":
            cg.kill_all()
        if wait:
            _finish(proc, cg, tmp)
        else:
            _reaper_queue().put((proc, cg, tmp))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- running code ----------------------------------------------------------------------
    def run(self, code: str, timeout_s: float = 5.0, *, display: bool = False) -> RunResult:
        """Run ``code`` in this sandbox's interpreter; see RunResult for the statuses."""
        with self._lock:
            if self._proc is None:
                self._spawn()
            self.wait_ready()
            proc, cg = self._proc, self._cg
            if proc is None:
                raise SandboxError("sandbox was closed")
            t0 = time.monotonic()
            cpu_s = self.limits.cpu_s if self.limits.cpu_s else timeout_s + 1.0
            req = {"op": "exec", "code": code, "timeout_s": timeout_s, "cpu_s": cpu_s,
                   "display": display}
            deadline = t0 + timeout_s + _GRACE_S
            msg = self._send(proc, req, deadline)
            if msg is None:
                msg = self._recv(proc, deadline)
            try:
                res = self._result(msg, time.monotonic() - t0, proc, cg)
            except (TypeError, ValueError, KeyError):  # a forged or garbled answer
                res = self._result(_BAD, time.monotonic() - t0, proc, cg)
            if res.session_reset:
                self.close()
            return res

    def _result(self, msg, duration: float, proc, cg) -> RunResult:
        if isinstance(msg, dict) and "status" in msg:
            out, err = str(msg.get("stdout", "")), str(msg.get("stderr", ""))
            truncated = False
            if msg.get("stdout_dropped"):
                out, truncated = out + truncation_marker(int(msg["stdout_dropped"])), True
            if msg.get("stderr_dropped"):
                err, truncated = err + truncation_marker(int(msg["stderr_dropped"])), True
            status = msg["status"] if msg["status"] in (OK, ERROR, TIMEOUT) else ERROR
            reason = "wall clock" if status == TIMEOUT else ("SystemExit" if msg.get("exited")
                                                             else None)
            hits = cg.pids_limit_hits() if cg is not None else 0
            if hits > self._pids_seen:
                self._pids_seen, reason = hits, reason or "process/thread limit reached"
            code, error = msg.get("exit_code"), msg.get("error")
            if not (code is None or type(code) is int) or not (error is None or
                                                               isinstance(error, str)):
                raise ValueError("bad answer")
            return RunResult(status, out, err, duration, code, truncated,
                             session_reset=status == TIMEOUT, reason=reason, error=error)
        if msg == _LATE:
            return RunResult(TIMEOUT, duration_s=duration, exit_code=None, session_reset=True,
                             reason="wall clock (hard kill)", error="TimeoutError")
        if msg == _BAD:
            return RunResult(KILLED, stderr="sandbox protocol violated; sandbox killed",
                             duration_s=duration, exit_code=None, session_reset=True,
                             reason="protocol")
        # EOF: the interpreter is gone. Why?
        try:
            rc = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        oom = cg is not None and cg.oom_killed()
        sig = rc - 128 if rc is not None and rc > 128 else (-rc if rc is not None and rc < 0
                                                             else None)
        if oom:
            return RunResult(KILLED, stderr=f"MemoryError: the sandbox's memory limit "
                             f"({self.limits.memory_mb} MiB) was exceeded; process killed",
                             duration_s=duration, exit_code=-9, session_reset=True,
                             reason="memory", error="MemoryError")
        if sig == signal.SIGXCPU:
            return RunResult(TIMEOUT, duration_s=duration, exit_code=None, session_reset=True,
                             reason="cpu time", error="TimeoutError")
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            return RunResult(KILLED, stderr=f"process killed by signal {name}",
                             duration_s=duration, exit_code=-sig, session_reset=True,
                             reason=f"signal {name}" if sig != signal.SIGXFSZ else "file size")
        status = OK if rc == 0 else ERROR
        return RunResult(status, duration_s=duration, exit_code=rc, session_reset=True,
                         reason="interpreter exited")

    # -- wire protocol ---------------------------------------------------------------------
    def _send(self, proc, obj, deadline):
        data = json.dumps(obj).encode()
        view = memoryview(_HDR.pack(len(data)) + data)
        fd = proc.stdin.fileno()
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                return _LATE
            _, w, _ = select.select([], [fd], [], left)
            if w:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue
                except (BrokenPipeError, OSError):
                    return _EOF
        return None

    def _recv(self, proc, deadline):
        try:
            fd = proc.stdout.fileno()
        except ValueError:  # closed by a concurrent close()
            return _EOF
        limit = 8 * self.limits.max_output_bytes + (1 << 20)
        while True:
            if len(self._buf) >= 4:
                (n,) = _HDR.unpack(self._buf[:4])
                if n > limit:
                    return _BAD
                if len(self._buf) >= 4 + n:
                    data, self._buf = bytes(self._buf[4:4 + n]), self._buf[4 + n:]
                    try:
                        msg = json.loads(data)
                    except ValueError:
                        return _BAD
                    return msg if isinstance(msg, dict) else _BAD
            left = deadline - time.monotonic()
            if left <= 0:
                return _LATE
            try:
                r, _, _ = select.select([fd], [], [], left)
                chunk = os.read(fd, 1 << 16) if r else None
            except (OSError, ValueError):  # closed under us by close()
                return _EOF
            if chunk == b"":
                return _EOF
            if chunk:
                self._buf += chunk

    @staticmethod
    def _stderr_tail(proc) -> str:
        try:
            proc.wait(timeout=2)
            return proc.stderr.read()[-4000:].decode("utf-8", "replace").strip()
        except subprocess.TimeoutExpired:
            return "(still running)"
        except (OSError, ValueError):
            return ""
