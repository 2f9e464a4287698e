"""The harness with hundreds of parties: descriptors past 1023, limits it cannot raise,
and a room of 150 that all hear everyone (slow: ~1 minute on a busy 2-core machine)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness.party import SELECT_LIMIT
from harness.pytest_plugin import Room


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Hold enough descriptors open that the next ones opened (a party's pty) are above
    1023, as they are in a run of hundreds of parties."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = SELECT_LIMIT + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.fail(f"the open-file hard limit {hard} is below {want}: raise it to run this")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[int] = []
    try:
        while not held or held[-1] < SELECT_LIMIT:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_parties_on_descriptors_above_1023_still_hear_each_other(
    high_descriptors: None, chatbox_room: Room
) -> None:
    alice, bob = chatbox_room.join("alice", "bob")
    assert bob.child is not None and bob.child.child_fd >= SELECT_LIMIT
    hi = chatbox_room.say(alice, "hello from far up the descriptor table")
    assert chatbox_room.heard(bob, hi)
    back = chatbox_room.say(bob, "heard you")
    assert chatbox_room.heard(alice, back)


def _low_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_an_open_file_limit_too_low_for_the_parties_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.run", "--scenario", "broadcast", "--clients", "300"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_low_open_files,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "300 parties need about" in out and "hard limit is 256" in out, out
    assert "Traceback" not in out


@pytest.mark.slow
def test_a_room_of_150_parties_all_hear_everyone() -> None:
    """A broadcast among 150 client processes in ptys passes every check (the default
    timeout grows with the parties; joining waits while listeners still arrive)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.run",
            "--scenario",
            "broadcast",
            "--clients",
            "150",
            "--messages",
            "1",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "PASS: 1/1 runs passed" in out, out
