"""A party's process on its terminal: how it is started, read and ended."""

from __future__ import annotations

import os
import sys
import time

from harness.party import Party
from harness.processes import child_env
from harness.transcript import PartyLog

# A client that, told to quit, still has a backlog to show (as a leaver in a busy room
# does) and shows it at a steady pace before it exits: longer than the grace in all.
BUSY_LEAVER = """
import sys, time
for line in sys.stdin:
    if line.strip() == "/quit":
        for i in range(60):
            print(f"backlog line {i}", flush=True)
            time.sleep(0.05)
        print("bye", flush=True)
        sys.exit(0)
"""
TERMINAL = """
import os, sys
print(os.ttyname(0), os.getsid(0) == os.getpid(), os.path.exists("/dev/tty"), flush=True)
open("/dev/tty").close()  # it is this session's controlling terminal
print("has a controlling terminal", flush=True)
sys.stdin.readline()
"""


def make_party(code: str) -> Party:
    t0 = time.monotonic()
    return Party(
        "p",
        [sys.executable, "-c", code],
        PartyLog("p"),
        lambda: time.monotonic() - t0,
        env=child_env(),
        known_crcs={},
        quit_line="/quit",
    )


def test_a_leaver_still_showing_its_backlog_is_let_finish_not_killed() -> None:
    party = make_party(BUSY_LEAVER)
    party.start()
    try:
        party.close(grace=1.0, busy_until=time.monotonic() + 120)
    finally:
        party.close()
    assert party.log.exit_status == "exit 0"
    assert party.seen_text("bye")


def test_a_leaver_that_shows_nothing_is_ended_after_the_grace() -> None:
    party = make_party("import time; time.sleep(600)")
    party.start()
    party.close(grace=0.5, busy_until=time.monotonic() + 600)
    assert party.log.exit_status in ("signal 15", "signal 9")  # not left to sleep on


def test_the_client_runs_in_its_own_session_on_its_terminal() -> None:
    party = make_party(TERMINAL)
    party.start()
    try:
        assert party.wait_text("has a controlling terminal", time.monotonic() + 60)
        line = party.text_with("/dev/pts/")
        assert line is not None and line.split()[1:] == ["True", "True"], line
        assert party.child is not None and os.get_blocking(party.child.child_fd) is False
    finally:
        party.close()
    assert party.log.exit_status == "exit 0"
