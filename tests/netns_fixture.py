"""Shared pieces for tests that build namespace networks: skip reasons, process helpers,
and the leak check (no namespace, link, janitor or process of ours left)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from needs import needs

from harness.daemon import Daemon, Readiness
from harness.hosts.base import Host, HostError
from harness.hosts.namespaces import list_named, run_checked
from harness.hosts.netns import NAMESPACE_PREFIX, NetnsNetwork
from harness.processes import child_env

__all__ = ["child_env"]  # with the names below: one environment for every child

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 20.0  # generous: a loaded 2-core CI box starting Python in a namespace


def _mode_skip_reason(mode: str) -> str | None:
    """Why a namespace network of this backend cannot be built here (None: it can)."""
    try:
        with NetnsNetwork(client_hosts=1, mode=mode):
            pass
    except HostError as exc:
        return f"netns ({mode}) unavailable here: {exc}"
    return None


MODE_SKIP = {mode: _mode_skip_reason(mode) for mode in ("named", "held")}
NETNS_SKIP = None if None in MODE_SKIP.values() else " / ".join(map(str, MODE_SKIP.values()))
needs_netns = needs(NETNS_SKIP)
needs_named = needs(MODE_SKIP["named"])
needs_held = needs(MODE_SKIP["held"])
needs_root = needs(None if os.geteuid() == 0 else "needs root (ip netns, sshd)")


def read_line(stream: object, timeout: float = WAIT_S) -> str:
    """One line from a child's text pipe, or AssertionError after ``timeout``."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no line within {timeout}s"
    return str(stream.readline())  # type: ignore[attr-defined]


@contextlib.contextmanager
def started(argv: Sequence[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    """Start a child with text pipes; on exit kill and reap it, whatever happened."""
    proc: subprocess.Popen[str] = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        **kwargs,  # type: ignore[call-overload]
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@contextlib.contextmanager
def announced(argv: Sequence[str], label: str = "server") -> Iterator[tuple[Daemon, int]]:
    """A server started as the harness starts one; yields (daemon, the port it announced).

    Resource handling: its process group is ended and reaped on exit, whatever happened.
    """
    daemon = Daemon(label, argv)
    try:
        daemon.start()
        port = daemon.wait_ready(Readiness("line"), 0, lambda _: False, time.monotonic() + WAIT_S)
        yield daemon, port
    finally:
        daemon.stop()


@contextlib.contextmanager
def chat_server(host: Host, address: str) -> Iterator[tuple[Daemon, int]]:
    """`python -m chatbox.server` on ``host``, bound to ``address``; yields (daemon, port)."""
    argv = host.command([sys.executable, "-m", "chatbox.server", "0", "--host", address])
    with announced(argv) as running:
        yield running


def wait_pid_gone(pid: int, timeout: float = WAIT_S) -> bool:
    """Wait for a process that may not be our child to exit (pidfd: an event, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by whoever adopted it) is not running anything.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def root_links(tag: str) -> list[str]:
    out = run_checked(["ip", "-o", "link", "show"], what="ip link show")
    return [line.split(":")[1].strip() for line in out.splitlines() if tag in line]


@dataclass
class Traces:
    """What a network leaves behind if cleanup failed; empty lists mean no leak."""

    namespaces: list[str]
    links: list[str]
    janitor_alive: bool

    @property
    def clean(self) -> bool:
        return not self.namespaces and not self.links and not self.janitor_alive


def traces(run_id: str, link_tag: str, janitor_pid: int) -> Traces:
    return Traces(
        namespaces=list_named(run_id),
        links=root_links(link_tag),
        janitor_alive=pid_alive(janitor_pid),
    )


def network_traces(net: NetnsNetwork) -> Traces:
    return traces(net.run_id, net.link_tag, net.namespaces.janitor.pid)


def worker_namespaces() -> list[str]:
    """Namespaces named for this test process (this xdist worker) still present."""
    return list_named(f"{NAMESPACE_PREFIX}{os.getpid()}-")


def kill_and_reap(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    proc.communicate(timeout=WAIT_S)


def deadline_passed(start: float, limit: float = WAIT_S) -> bool:
    return time.monotonic() - start > limit
