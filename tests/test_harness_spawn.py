"""A party's process starts in a session of its own on its terminal, whichever way it is
spawned: a Ctrl-C typed there reaches it, as at a login."""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time
from collections.abc import Iterator

import pytest

from harness import spawn

# Says whether it leads its session and its terminal's foreground, then waits for a
# Ctrl-C and says it got one. The first line is said inside the try: the test types the
# Ctrl-C as soon as it sees that line, maybe before the probe is in its sleep.
PROBE = (
    "import os, sys, time\n"
    "try:\n"
    "    me = os.getpid()\n"
    "    print('session', os.getsid(0) == me, os.tcgetpgrp(0) == me, flush=True)\n"
    "    time.sleep(60)\n"
    "except KeyboardInterrupt:\n"
    "    print('interrupted', flush=True)\n"
)


@pytest.fixture(params=["ctypes", "os.posix_spawn"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "ctypes" and spawn._LIBC is None:
        pytest.skip("not Linux with the GNU C library: os.posix_spawn is the only way")
    if request.param == "os.posix_spawn":
        monkeypatch.setattr(spawn, "_LIBC", None)
    yield request.param


def read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    """What the terminal shows up to the end of the line that holds ``needle`` (a read
    may stop in the middle of a line)."""
    out = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in out.partition(needle)[2] and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError as exc:  # EIO: the child closed the terminal (it ended)
                if exc.errno != errno.EIO:
                    raise
                return out
    return out


def test_the_child_leads_a_session_on_its_terminal_and_hears_ctrl_c(way: str) -> None:
    master, slave = os.openpty()
    try:
        pid = spawn.spawn_on_terminal(
            sys.executable,
            [sys.executable, "-c", PROBE],
            dict(os.environ),
            os.ttyname(slave),
            (signal.SIGINT,),
        )
    finally:
        os.close(slave)
    try:
        assert b"session True True" in read_until(master, b"session"), way
        os.write(master, b"\x03")  # Ctrl-C, as typed
        assert b"interrupted" in read_until(master, b"interrupted"), way
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(master)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_a_program_that_cannot_run_is_an_os_error_with_the_reason(way: str) -> None:
    with pytest.raises(OSError) as raised:
        spawn.spawn_on_terminal("/nonexistent/program", ["program"], {}, os.devnull, ())
    assert raised.value.errno == errno.ENOENT
    assert "No such file" in str(raised.value)
