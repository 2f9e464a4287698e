"""The ssh host kind: the server and the clients run on other machines, through OpenSSH.

Each process is its own ``ssh`` session (no ControlMaster: a session is then exactly one
process, and ending the local ``ssh`` ends the far side). Defaults (a ``-o`` the user gives
comes first on the command line, and ssh keeps the first value, so the user's wins):

- ``BatchMode=yes``: never a password or host-key prompt that would hang a test run; an
  unknown host key or a refused key is an error, reported in one line.
- ``ServerAliveInterval``: a far host that vanishes is noticed within seconds.
- ``-tt`` when the process needs a terminal (a chat client driven through a pty), ``-T``
  otherwise, so a server's output is not rewritten by a remote line discipline.

How remote processes end when the run ends: the harness ends the *local* ``ssh`` (its
process group, like any child). sshd then closes the session: the remote pty hangs up
(``-tt``) or the remote stdout pipe loses its reader (``-T``). A remote command would not
reliably notice the latter (a quiet server writes nothing and so gets no SIGPIPE), so
every remote command runs under a tiny Python *lifeline* that waits for exactly that event
(``poll`` on its stdout reports HUP/ERR) or for the command's own exit, and on hangup
sends SIGTERM, then SIGKILL after a grace period, to the command's whole process group (a
forking server's workers too). Without a pty it first says its process group on stderr
(``lifeline: process group N``), so that the harness can kill the whole of it with
SIGKILL through a second session (`SshHost.kill`: a power loss, which ending the session
cannot be). The lifeline also switches the remote pty's echo off,
like a local pty opened with ``echo=False``, and sets ``PYTHONUNBUFFERED=1``. So the far
hosts need ``python3`` (the chat programs under test need it anyway); opening the network
checks that, and the login, on every host before anything starts.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
import zlib
from collections.abc import Sequence

from harness.daemon import Daemon
from harness.hosts.base import Host, HostError, Network
from harness.hosts.roundtrip import measure_round_trip_ms

# Seconds between keep-alives and how many may go unanswered: a dead far host ends the
# session in ~15 s instead of hanging the run until TCP gives up (minutes).
ALIVE_INTERVAL_S = 5
ALIVE_COUNT = 3
CONNECT_TIMEOUT_S = 10
PROBE_TIMEOUT_S = 30.0

# Runs on the far host as `python3 -c LIFELINE ARGV...`; see the module docstring. A ^C
# typed into the remote pty is the command's business (it gets its own SIGINT from the
# line discipline), so the lifeline only notes it; handlers, unlike SIG_IGN, are not
# inherited by the command.
LIFELINE = r"""
import os, select, signal, subprocess, sys, termios, time
for fd in (0, 1):
    if os.isatty(fd):
        a = termios.tcgetattr(fd)
        a[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, a)
        break
env = dict(os.environ, PYTHONUNBUFFERED="1")
hung = []
def hangup(signum, frame):
    hung.append(signum)
def ignore(signum, frame):
    pass
signal.signal(signal.SIGHUP, hangup)
signal.signal(signal.SIGTERM, hangup)
signal.signal(signal.SIGINT, ignore)
try:
    child = subprocess.Popen(sys.argv[1:], env=env)
except OSError as e:
    sys.stderr.write(f"cannot run {sys.argv[1]}: {e.strerror}\n")
    sys.exit(127)
if not os.isatty(2):
    sys.stderr.write(f"lifeline: process group {os.getpgid(0)}\n")
    sys.stderr.flush()
p = select.poll()
p.register(1, 0)
try:
    pidfd = os.pidfd_open(child.pid)
    p.register(pidfd, select.POLLIN)
    wait_ms = None
except (AttributeError, OSError):
    wait_ms = 200
while child.poll() is None and not hung:
    try:
        if any(fd == 1 for fd, ev in p.poll(wait_ms)):
            break
    except InterruptedError:
        pass
if child.poll() is None:
    for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + 3
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)
code = child.wait()
sys.exit(code if code >= 0 else 128 - code)
"""

# The line a lifeline without a pty says first on stderr, before its process group.
GROUP_LINE = "lifeline: process group "

# Sent packed: one short line in reports and in `ps` on the far host instead of forty.
_LIFELINE_PACKED = (
    'import base64,zlib;exec(zlib.decompress(base64.b64decode("'
    + base64.b64encode(zlib.compress(LIFELINE.encode(), 9)).decode()
    + '")))'
)


def split_destination(destination: str) -> tuple[str | None, str]:
    """``USER@HOST`` -> (USER, HOST); ``HOST`` -> (None, HOST).

    Error handling: an empty or blank destination raises `HostError`.
    """
    user, at, host = destination.rpartition("@")
    if not host or any(c.isspace() for c in destination):
        raise HostError(f"bad ssh host {destination!r}: expected USER@HOST or HOST")
    return (user if at else None), host


class SshHost(Host):
    """A machine reached with ``ssh DESTINATION``."""

    kind = "ssh"
    sees_processes = False  # the local process is ssh; the far side's are out of sight

    def __init__(
        self,
        destination: str,
        *,
        port: int | None = None,
        identity: str | None = None,
        options: Sequence[str] = (),
        python: str = "python3",
    ) -> None:
        _, host = split_destination(destination)
        self.destination = destination
        self.label = destination
        self.address = host
        self.python = python
        # ssh keeps the first value it sees for an option: the user's -o come first so they
        # can override our defaults (a longer ConnectTimeout, say).
        base = ["ssh"]
        for option in options:
            base += ["-o", option]
        base += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o",
            f"ServerAliveInterval={ALIVE_INTERVAL_S}",
            "-o",
            f"ServerAliveCountMax={ALIVE_COUNT}",
            "-o",
            "LogLevel=ERROR",  # no "Warning: Permanently added..." lines in a party's output
        ]
        if port is not None:
            base += ["-p", str(port)]
        if identity is not None:
            base += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        self.ssh_base = base

    def command(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        remote = shlex.join([self.python, "-c", _LIFELINE_PACKED, *argv])
        return [*self.ssh_base, "-tt" if tty else "-T", self.destination, remote]

    def kill(self, daemon: Daemon) -> None:
        """SIGKILL the far process group the lifeline of ``daemon`` said it is in (a
        power loss of that process, workers and all), through a second session; the
        local ssh then ends by itself."""
        said = [line for line in daemon.stderr_lines() if line.startswith(GROUP_LINE)]
        if not said:
            raise HostError(f"{self.label}: {daemon.label} never said its process group")
        group = int(said[0][len(GROUP_LINE) :])
        subprocess.run(
            self.shell(f"kill -KILL -- -{group}"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )

    def shell(self, script: str) -> list[str]:
        """The local argv that runs a plain shell ``script`` there (no lifeline)."""
        return [*self.ssh_base, "-T", self.destination, script]

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["destination"] = self.destination
        return info


def _probe(hosts: Sequence[SshHost]) -> dict[str, str]:
    """Log in to every host at once; return each one's address as the sshd saw it.

    The address is the third field of ``$SSH_CONNECTION`` (the local end of the sshd's
    socket): the address a client on the network can use, even when the user named the
    host by an ssh alias. It also proves, before anything starts, that BatchMode login
    works and that the far side has the Python the lifeline needs.

    Error handling: raises `HostError` naming the host and ssh's own last error line.
    """
    script = 'echo "addr $SSH_CONNECTION"; command -v {py} >/dev/null || echo "nopython"'
    running = {
        h.destination: subprocess.Popen(
            h.shell(script.format(py=shlex.quote(h.python))),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in hosts
    }
    found: dict[str, str] = {}
    problems: list[str] = []
    for destination, proc in running.items():
        try:
            out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            problems.append(f"{destination}: no answer within {PROBE_TIMEOUT_S:.0f}s")
            continue
        fields = next((ln.split() for ln in out.splitlines() if ln.startswith("addr ")), [])
        if proc.returncode != 0 or len(fields) < 4:
            lines = err.strip().splitlines()
            why = lines[-1] if lines else f"ssh exited {proc.returncode}"
            problems.append(f"{destination}: {why}")
        elif "nopython" in out.split():
            problems.append(f"{destination}: no python3 there (the remote lifeline needs it)")
        else:
            found[destination] = fields[3]
    if problems:
        raise HostError("ssh: cannot use " + "; ".join(problems))
    return found


class SshNetwork(Network):
    """A server host and client hosts reached through OpenSSH.

    The server listens on ``listen`` (default ``0.0.0.0``: every address of its host);
    clients connect to ``server_address`` if given, else to the address the server host's
    sshd saw our connection arrive at. `describe` reports both.

    Resource handling: nothing is created on the far hosts except the processes, which
    end with their ssh sessions (module docstring); ``close`` has nothing left to remove.
    Error handling: `HostError` if a host cannot be logged in to (checked up front).
    """

    kind = "ssh"

    def __init__(
        self,
        server_host: str,
        client_hosts: Sequence[str] = (),
        *,
        port: int | None = None,
        identity: str | None = None,
        options: Sequence[str] = (),
        python: str = "python3",
        listen: str = "0.0.0.0",
        server_address: str | None = None,
        probe: bool = True,
        node_hosts: Sequence[str] = (),
    ) -> None:
        made: dict[str, SshHost] = {}

        def make(destination: str) -> SshHost:
            # One object per destination, so the probed address reaches every use of it.
            if destination not in made:
                made[destination] = SshHost(
                    destination, port=port, identity=identity, options=options, python=python
                )
            return made[destination]

        server = make(server_host)
        # No client hosts named: the clients run on the server's host, still over ssh.
        clients = [make(d) for d in client_hosts] or [server]
        # A cluster's other nodes (--node-host); without any, every node on the server's.
        nodes = [server, *(make(d) for d in node_hosts)]
        self._listen = listen
        self._rtt: float | None = None
        self._measured = False
        if probe:
            seen = _probe(list(made.values()))
            for host in made.values():
                host.address = seen[host.destination]
        self.server = server
        self.clients = list(clients)
        self.nodes = nodes
        self._connect = server_address or server.address

    def node_hosts(self) -> list[Host]:
        return list(self.nodes)

    @property
    def listen_address(self) -> str:
        return self._listen

    @property
    def connect_address(self) -> str:
        return self._connect

    def round_trip_ms(self) -> float | None:
        """Median TCP round trip between client host 0 and the server host (measured once,
        over the same path the chat traffic takes)."""
        if not self._measured:
            self._measured = True
            self._rtt = measure_round_trip_ms(
                self.server, self.clients[0], bind=self._listen, connect=self._connect
            )
        return self._rtt

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info["listen_address"] = self._listen
        if len(self.nodes) > 1:
            info["nodes"] = [h.describe() for h in self.nodes]
        return info

    def close(self) -> None:
        """Nothing to remove: remote processes end with their ssh sessions."""
