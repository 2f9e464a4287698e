"""A process on a new pseudo-terminal, started without forking the harness.

pexpect (ptyprocess) starts a child with `pty.fork`: a `fork()` of the whole harness,
which copies its page tables and holds the GIL throughout, then the child's own setup
in Python before it execs. With a hundred parties started at once from threads, the
starters took turns at the GIL and a room of 100 took 7-14 s to start. Here the pty is
made and set up (size, no echo) in the harness, and the child is started with
``posix_spawn`` (a vfork on Linux: the parent's memory is not copied; through ctypes,
with the GIL released meanwhile: `harness.spawn`) in a new session that opens the
terminal as its first descriptor - which makes it the session's controlling terminal,
as a login or pexpect would have it.

The child is registered with no death signal: the lifeline (`harness.processes`) ends
it if the harness dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import struct
import termios
import threading
from collections.abc import Mapping, Sequence

from harness.spawn import spawn_on_terminal


class PtyChild:
    """One process whose standard input, output and error are a new terminal.

    ``child_fd`` is the harness's (master) side, non-blocking. `isalive` reaps the
    process once it has exited; then `exitstatus` or `signalstatus` says how.

    Error handling: `OSError` when the command cannot be run (not found, not executable,
    no ptys left), with the reason in its message.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        dimensions: tuple[int, int],
        echo: bool = False,
    ) -> None:
        path = shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if path is None:
            raise OSError(f"command not found: {argv[0]}")
        master, slave = os.openpty()
        try:
            rows, cols = dimensions
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            if not echo:
                attrs = termios.tcgetattr(slave)
                attrs[3] &= ~termios.ECHO
                termios.tcsetattr(slave, termios.TCSANOW, attrs)
            terminal = os.ttyname(slave)
            # The child opens the terminal by name after setsid(), so it becomes its
            # controlling terminal; our descriptors are close-on-exec (PEP 446).
            # Nothing blocked, as in a fresh login; the signals Python sets up for
            # itself at their defaults.
            self.pid = spawn_on_terminal(
                path,
                argv,
                env,
                terminal,
                (signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.child_fd = master
        self.exitstatus: int | None = None
        self.signalstatus: int | None = None
        self._reaped = False
        self._closed = False
        self._lock = threading.Lock()

    def isalive(self) -> bool:
        """Whether the process still runs; reaps it (once) when it has exited."""
        with self._lock:
            if self._reaped:
                return False
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: nothing more to learn
                self._reaped = True
                return False
            if pid == 0:
                return True
            self._reaped = True
            if os.WIFSIGNALED(status):
                self.signalstatus = os.WTERMSIG(status)
            else:
                self.exitstatus = os.waitstatus_to_exitcode(status)
            return False

    def close(self) -> None:
        """Close the terminal; a process still running then is killed and reaped. Safe to
        call twice (the descriptor is closed once: its number may be another's by then)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.close(self.child_fd)
        if self.isalive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with self._lock:
                if not self._reaped:
                    _, status = os.waitpid(self.pid, 0)
                    self._reaped = True
                    self.signalstatus = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                    if self.signalstatus is None:
                        self.exitstatus = os.waitstatus_to_exitcode(status)
