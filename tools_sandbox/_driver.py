"""In-sandbox REPL driver: reads length-prefixed JSON requests, runs cells, answers.

Runs *inside* the sandbox (stdlib only, started with ``python -I -S -B``), so a malicious cell
can at worst break its own sandbox. Start-up, before any untrusted input is read: keep the
protocol pipes on private fds, point stdin at /dev/null (``input()`` gets EOF), set rlimits,
drop to the unprivileged uid (when started as root by a privileged bwrap), then enable
site-packages. fds 1/2 become pipes drained by threads into capped per-cell buffers, so output
written by C code and child processes is captured and capped too.

Wire format, both ways: 4-byte big-endian length + UTF-8 JSON object.
"""
import json
import os
import resource
import select
import signal
import struct
import sys
import threading
import time

_HDR = struct.Struct(">I")
_MAX_REQUEST = 64 << 20


class _CellTimeout(BaseException):
    """Raised by SIGALRM; BaseException so ``except Exception`` in a cell does not swallow it."""


def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_msg(fd):
    hdr = _read_exact(fd, 4)
    if hdr is None:
        return None
    (n,) = _HDR.unpack(hdr)
    if n > _MAX_REQUEST:
        return None
    data = _read_exact(fd, n)
    return None if data is None else json.loads(data.decode("utf-8"))


def _write_msg(fd, obj):
    data = json.dumps(obj).encode("utf-8")
    view = memoryview(_HDR.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


class _Capture:
    """Drains one pipe (the cell's fd 1 or 2) and keeps at most ``limit`` bytes per cell."""

    def __init__(self, fd, limit):
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        os.set_blocking(r, False)
        self.r, self.limit = r, limit
        self.lock = threading.Lock()
        self.buf, self.total = bytearray(), 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _take(self):
        # Caller holds self.lock: read and store are one step, so a drain sees all data.
        while True:
            try:
                data = os.read(self.r, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                return
            room = self.limit - len(self.buf)
            if room > 0:
                self.buf += data[:room]
            self.total += len(data)

    def _loop(self):
        while True:
            select.select([self.r], [], [])
            with self.lock:
                self._take()

    def collect(self):
        with self.lock:
            self._take()
            data, total = bytes(self.buf), self.total
            self.buf, self.total = bytearray(), 0
        return data.decode("utf-8", "replace"), total - len(data)


def _drop_privileges(uid, gid):
    """Root inside a privileged bwrap: become ``uid`` (no capabilities, no way back)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):  # empty the bounding set while CAP_SETPCAP is still held
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            break
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("privilege drop failed")
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self stays readable by the cell


class Driver:
    def __init__(self, cfg):
        self.cfg = cfg
        self.pid = os.getpid()
        self.ns = {"__name__": "__main__", "__builtins__": __builtins__}
        self.cells = 0

    def run_cell(self, req):
        self.cells += 1
        name = "<cell-%d>" % self.cells
        code, display = req.get("code", ""), bool(req.get("display", False))
        timeout_s, cpu_s = float(req.get("timeout_s", 5.0)), req.get("cpu_s")
        status, exit_code, error, exited = "ok", 0, None, False
        t0 = time.monotonic()
        if self.stdout.closed or self.stderr.closed:  # a cell closed them: make new ones
            self.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
            self.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        try:
            if cpu_s:
                used = resource.getrusage(resource.RUSAGE_SELF)
                _, hard = resource.getrlimit(resource.RLIMIT_CPU)
                soft = int(used.ru_utime + used.ru_stime + float(cpu_s)) + 1
                resource.setrlimit(resource.RLIMIT_CPU, (soft if hard < 0 else min(soft, hard), hard))
            signal.signal(signal.SIGALRM, _raise_timeout)
            try:
                signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.001))
                try:
                    self._exec(code, name, display)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _CellTimeout:
                status, exit_code, error = "timeout", None, "TimeoutError"
            except SystemExit as exc:
                exit_code, exited = _exit_code(exc.code), True
                if exit_code:
                    status, error = "error", "SystemExit: %s" % (exc.code,)
            except BaseException as exc:  # the cell's own exception
                status, exit_code = "error", 1
                error = traceback.format_exception_only(type(exc), exc)[-1].strip()
                tb = exc.__traceback__
                while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
                    tb = tb.tb_next
                try:
                    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
                except BaseException:
                    pass
        except _CellTimeout:  # the alarm hit between the cell's end and the timer reset
            status, exit_code, error = "timeout", None, "TimeoutError"
        for stream in (self.stdout, self.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        if os.getpid() != self.pid:  # a forked child finished the cell: it must not answer
            os._exit(0)
        out, out_dropped = self.cap_out.collect()
        err, err_dropped = self.cap_err.collect()
        return {"status": status, "exit_code": exit_code, "error": error,
                "stdout": out, "stderr": err, "stdout_dropped": out_dropped,
                "stderr_dropped": err_dropped, "exited": exited, "cell_s": time.monotonic() - t0}

    def _exec(self, code, name, display):
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        last = None
        try:
            if display:
                import ast

                tree = ast.parse(code, name, "exec")
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    last = ast.Expression(tree.body.pop().value)
                compiled = compile(tree, name, "exec")
            else:
                compiled = compile(code, name, "exec")
        except SyntaxError as exc:  # report it without the compiler's own frames
            raise exc.with_traceback(None)
        exec(compiled, self.ns)
        if last is not None:
            value = eval(compile(last, name, "eval"), self.ns)
            if value is not None:
                self.ns["_"] = value
                print(repr(value))


def _raise_timeout(signum, frame):
    raise _CellTimeout()


def _exit_code(code):
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _add_site_packages():
    """site-packages on sys.path without running .pth import lines: those (editable-install
    finders, setuptools' distutils shim) are host configuration, and cost ~40 ms per start."""
    import site

    site.setquit()  # exit() / quit(), as in a normal interpreter
    prefixes = [sys.prefix]
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    for conf in (os.path.join(exe_dir, "pyvenv.cfg"),
                 os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg")):
        if os.path.isfile(conf):  # a venv: what site.venv() would do, minus .pth imports
            with open(conf) as f:
                system = any(line.split("=")[0].strip() == "include-system-site-packages"
                             and line.split("=", 1)[1].strip().lower() == "true" for line in f)
            sys.prefix = sys.exec_prefix = os.path.dirname(exe_dir)
            prefixes = [sys.prefix] + ([sys.base_prefix] if system else [])
            break
    for d in site.getsitepackages(prefixes):
        if not os.path.isdir(d) or d in sys.path:
            continue
        sys.path.append(d)
        for name in sorted(os.listdir(d)):
            if not name.endswith(".pth"):
                continue
            try:
                with open(os.path.join(d, name)) as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                line = line.strip()
                if line and not line.startswith(("#", "import ", "import\t")):
                    path = os.path.join(d, line)
                    if os.path.isdir(path) and path not in sys.path:
                        sys.path.append(path)


def _apply_rlimits(limits):
    for name, value in limits.items():
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))


def main():
    cfg = json.loads(sys.argv[1])
    proto_in, proto_out = os.dup(0), os.dup(1)
    for fd in (proto_in, proto_out):
        os.set_inheritable(fd, False)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    _apply_rlimits(cfg.get("rlimits", {}))
    if cfg.get("uid") is not None and os.getuid() == 0:
        _drop_privileges(int(cfg["uid"]), int(cfg["gid"]))
    if cfg.get("site", True):
        _add_site_packages()
    sys.path.insert(0, "")  # like ``python -c``: the scratch dir (cwd) is importable
    driver = Driver(cfg)
    limit = int(cfg.get("max_output", 65536))
    driver.cap_out, driver.cap_err = _Capture(1, limit), _Capture(2, limit)
    driver.stdout, driver.stderr = sys.stdout, sys.stderr
    sys.argv = [""]
    _write_msg(proto_out, {"ready": True, "uid": os.getuid(), "pid": os.getpid()})
    global linecache, traceback  # after "ready": a warm sandbox imports these while idle
    import linecache
    import traceback
    while True:
        req = _read_msg(proto_in)
        if req is None:
            os._exit(0)
        if req.get("op") == "exec":
            resp = driver.run_cell(req)
        else:
            resp = {"pong": True}
        _write_msg(proto_out, resp)


if __name__ == "__main__":
    main()
