"""Process control: every process the harness starts is ended and reaped, always.

Rules this module owns:

- Every child runs in its own process group (a new session), so ending it ends whatever
  it forked too (a forking server's workers, ``ip netns exec``'s child, ssh's helpers).
- Ending is SIGTERM to the group, a grace period, then SIGKILL; then the leader is reaped.
- A *lifeline* outlives nothing: a tiny watchdog process holds the read end of a pipe
  whose write end only the harness has. When the harness dies - even by ``kill -9`` -
  the kernel closes the pipe, the watchdog reads EOF and kills every group the harness
  registered. As a second line, direct children get ``PR_SET_PDEATHSIG``.
- Children get ``PYTHONUNBUFFERED=1`` explicitly, never inherited by luck.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping

from harness.bytecode import use_private_cache

TERM_GRACE = 2.0  # seconds a group gets between SIGTERM and SIGKILL: a server says goodbye

# The watchdog: reads "+PGID" / "-PGID" lines; on EOF (the harness is gone) it ends every
# group still registered. It ignores SIGINT/SIGHUP so a Ctrl-C aimed at the harness's
# terminal cannot kill it before it has done its job.
_WATCHDOG = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[:1] == "+":
        groups.add(int(line[1:]))
    elif line[:1] == "-":
        groups.discard(int(line[1:]))
def alive(g):
    try:
        os.killpg(g, 0)
        return True
    except OSError:
        return False
for sig in (signal.SIGTERM, signal.SIGKILL):
    for g in list(groups):
        try:
            os.killpg(g, sig)
        except OSError:
            groups.discard(g)
    deadline = time.monotonic() + 2.0
    while groups and time.monotonic() < deadline:
        groups = {g for g in groups if alive(g)}
        time.sleep(0.05)
"""

_PR_SET_PDEATHSIG = 1


def _load_libc() -> ctypes.CDLL | None:
    # Loaded once, here, in the parent: a forked child of a threaded process must not
    # take the dynamic loader's locks (another thread may have held them at fork time).
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


class Lifeline:
    """The watchdog that ends every registered process group when the harness dies.

    Resource handling: one watchdog per harness process, started on first use; `close`
    ends it cleanly (after the harness has ended its children itself).
    """

    _instance: Lifeline | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> Lifeline:
        with cls._guard:
            if cls._instance is None or cls._instance._proc.poll() is not None:
                cls._instance = Lifeline()
            return cls._instance

    def _say(self, line: str) -> None:
        assert self._proc.stdin is not None
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()

    def register(self, pgid: int) -> None:
        self._say(f"+{pgid}")

    def unregister(self, pgid: int) -> None:
        self._say(f"-{pgid}")

    @property
    def pid(self) -> int:
        return self._proc.pid


def _set_pdeathsig() -> None:
    """In a fresh child: ask the kernel for SIGTERM when the harness thread that forked us
    dies. Linux only; elsewhere the watchdog alone covers it."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def preexec() -> Callable[[], None] | None:
    """The preexec function for children, or None where death signals don't exist.

    Only safe for processes started from the main thread: PDEATHSIG fires when the
    *thread* that forked the child ends, so other threads must not use it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return _set_pdeathsig


def child_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for every child: ours, unbuffered Python, no colours, no pager;
    bytecode in a private cache if ours says not to write any (`harness.bytecode`).

    ``extra`` adds variables; a None value removes one (``NO_COLOR``, to test colours).
    """
    env = dict(os.environ)
    use_private_cache(env)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TERM", "xterm")
    env["NO_COLOR"] = "1"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Children must import the same harness/chatbox as us, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(pgid: int, is_done: Callable[[], bool], grace: float = TERM_GRACE) -> None:
    """SIGTERM the group, wait up to ``grace`` for ``is_done``, then SIGKILL the group.

    ``is_done`` reaps the leader (``Popen.poll``, pexpect ``isalive``) and says whether it
    has exited. Whatever else is left in the group gets SIGKILL too.

    Error handling: a group that is already gone is not an error.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    # Polling: an exit of a process that is not our child (a group member) has no event.
    while time.monotonic() < deadline:
        if is_done() and not group_alive(pgid):
            break
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while not is_done() and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_until(condition: Callable[[], bool], what: str = "", timeout: float = 20.0) -> bool:
    """Re-check ``condition`` until it holds or ``timeout`` passes; whether it held.

    Only for what the kernel offers no event for (processes appearing or vanishing
    elsewhere in the tree, descriptor counts, zombies). With ``what``, a timeout raises
    AssertionError naming it instead of returning False (for tests).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            if what:
                raise AssertionError(f"timed out waiting for {what}")
            return False
        time.sleep(0.02)
    return True


def wait_gone(pgids: list[int], timeout: float = TERM_GRACE) -> list[int]:
    """Wait until the groups have no members left; return those still alive."""
    wait_until(lambda: not any(group_alive(g) for g in pgids), timeout=timeout)
    return [g for g in pgids if group_alive(g)]


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc); empty where that is not available."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
