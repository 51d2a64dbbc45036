"""Main loop of a reward worker process (the child side of RewardPool).

Protocol over a duplex Pipe:
  parent -> child: ``(idx, RewardInput)`` to score, or ``None`` to exit.
  child -> parent: ``("ready", pid)`` once the reward is loaded, ``("init_error", text)``
  if it cannot be loaded, then one ``("result", idx, RewardResult)`` per item.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback

from rewards.registry import call_reward
from rewards.schema import RewardResult
from rewards.serialization import Payload, load_payload

PARENT_POLL_S = 0.5


def worker_main(conn, payload: Payload, failure_score: float) -> None:
    """Load the reward once, then score items until EOF/None or until the parent disappears."""
    _detach_from_terminal_signals()
    # Baseline is whoever our parent is now: the pool's process (spawn/fork) or the
    # forkserver, which itself exits when the pool's process dies.
    _start_parent_watchdog(os.getppid())
    try:
        fn = load_payload(payload)
    except BaseException as exc:
        _send_quietly(conn, ("init_error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    if not _send_quietly(conn, ("ready", os.getpid())):
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # parent closed its end or died
            return
        if msg is None:
            return
        idx, item = msg
        result = call_reward(fn, item, failure_score)
        try:
            conn.send(("result", idx, result))
        except OSError:
            return
        except Exception as exc:  # the result (its info dict) could not be pickled
            reason = f"bad return type: result not picklable: {type(exc).__name__}: {exc}"
            if not _send_quietly(conn, ("result", idx, RewardResult.failure(reason, failure_score))):
                return


def _send_quietly(conn, msg) -> bool:
    """Send, returning False if the parent has gone away (pool closed while we started up)."""
    try:
        conn.send(msg)
        return True
    except OSError:
        return False


def _detach_from_terminal_signals() -> None:
    """Own process group + ignore Ctrl-C: the parent decides when workers stop.

    The process group also lets the parent kill a hung reward together with any
    subprocesses it started (``os.killpg``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgrp()
    except OSError:
        pass


def _start_parent_watchdog(parent_pid: int) -> None:
    """Exit once reparented (parent died), even while a reward call is hung, which pipe EOF can't see.

    A reward stuck in C code holding the GIL delays this until it returns; the parent's
    per-item timeout covers that case while the parent lives.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="reward-parent-watchdog", daemon=True).start()
