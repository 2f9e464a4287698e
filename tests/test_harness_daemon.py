"""The one way the tree starts a server: readiness, its whole stderr, and how it ended."""

from __future__ import annotations

import sys
import time

import pytest

from harness.daemon import (
    AUTO_GRACE_S,
    Daemon,
    DaemonError,
    Readiness,
    connectable,
    free_port,
    head_and_tail,
)

WAIT_S = 20.0  # a bound on events, never a pacing device
NO_PROBE = "no probe"


def refuse_probe(port: int) -> bool:
    raise AssertionError(NO_PROBE)


def started(*code: str) -> Daemon:
    daemon = Daemon("server", [sys.executable, "-c", "\n".join(code)])
    daemon.start()
    return daemon


def test_a_server_that_died_before_it_was_stopped_is_told_from_one_the_harness_ended() -> None:
    died = started("print('listening on 127.0.0.1:9', flush=True)", "import sys; sys.exit(4)")
    alive = started("print('listening on 127.0.0.1:9', flush=True)", "import time; time.sleep(60)")
    try:
        for daemon in (died, alive):
            daemon.wait_ready(Readiness("line"), 0, refuse_probe, time.monotonic() + WAIT_S)
        assert died.proc is not None and died.proc.wait(WAIT_S) == 4  # the event: its exit
    finally:
        ended = (died.stop(), alive.stop())
    assert ended == ("exit 4", "signal 15")
    assert died.died() == "exit 4"
    assert alive.died() == ""  # the harness's own SIGTERM is not a death


def test_its_stderr_is_kept_whole_and_shown_as_head_and_tail() -> None:
    daemon = started("import sys", "for i in range(5000): print(f'line {i}', file=sys.stderr)")
    try:
        assert daemon.proc is not None and daemon.proc.wait(WAIT_S) == 0
    finally:
        daemon.stop()
    lines = daemon.stderr_lines()
    assert lines == [f"line {i}" for i in range(5000)]
    shown = head_and_tail(lines)
    assert shown[0] == "line 0" and shown[-1] == "line 4999"
    assert "... (4960 more lines) ..." in shown


def test_line_readiness_waits_for_the_line_and_never_probes() -> None:
    daemon = started(
        "import time; time.sleep(0.5)", "print('booted, listening on [::1]:4242', flush=True)"
    )
    try:
        port = daemon.wait_ready(Readiness("line"), 0, refuse_probe, time.monotonic() + WAIT_S)
    finally:
        daemon.stop()
    assert port == 4242 and daemon.announced == ("::1", 4242)
    assert daemon.ready_how.startswith("line ('booted, listening on [::1]:4242' after")


def test_auto_readiness_probes_a_silent_server_only_after_the_grace() -> None:
    port = free_port()
    daemon = started(
        "import socket, time",
        f"s = socket.create_server(('127.0.0.1', {port}))",
        "time.sleep(60)",
    )
    t0 = time.monotonic()
    try:
        got = daemon.wait_ready(
            Readiness(), port, lambda p: connectable("127.0.0.1", p), t0 + WAIT_S
        )
    finally:
        daemon.stop()
    assert got == port
    assert time.monotonic() - t0 >= AUTO_GRACE_S  # nothing was probed before it
    assert daemon.ready_how.startswith("port (stdout silent) (")


def test_a_server_that_exits_first_is_an_error_with_its_status_and_stderr() -> None:
    daemon = started("import sys", "sys.exit('no such database')")
    try:
        with pytest.raises(DaemonError, match=r"exited \(exit 1\) before it was ready") as err:
            daemon.wait_ready(Readiness(), 0, refuse_probe, time.monotonic() + WAIT_S)
    finally:
        daemon.stop()
    assert str(err.value).endswith("its stderr:\nno such database")
