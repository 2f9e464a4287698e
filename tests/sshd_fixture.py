"""A real OpenSSH server for tests, inside one of the harness's own namespaces.

Everything is made for the test and thrown away after it: a host key, a client key
authorised for root, a known_hosts file naming exactly the test addresses, and an sshd
that listens only on a namespace address (198.18.0.0/15), so nothing outside the test
network can reach it and the machine's own sshd, if any, is untouched.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from needs import needs
from netns_fixture import REPO, WAIT_S

from harness.hosts.base import Host

SSHD = "/usr/sbin/sshd"


def sshd_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the test sshd logs in as root and needs root to start"
    if not os.path.exists(SSHD):
        return f"OpenSSH server not installed ({SSHD})"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"OpenSSH client not installed ({tool})"
    return None


SSHD_SKIP = sshd_skip_reason()
needs_sshd = needs(SSHD_SKIP)


@dataclass
class Keys:
    """Key material for one test module."""

    directory: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path

    def known_hosts(self, addresses: Sequence[str]) -> Path:
        public = (self.host_key.with_suffix(".pub")).read_text().split()[:2]
        path = self.directory / "known_hosts"
        path.write_text("".join(f"{a} {' '.join(public)}\n" for a in addresses))
        return path

    def ssh_options(self, addresses: Sequence[str]) -> list[str]:
        """``-o`` options that trust exactly our host key at exactly these addresses."""
        return [
            f"UserKnownHostsFile={self.known_hosts(addresses)}",
            "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes",
        ]


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "chatbox-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=WAIT_S,
    )
    return path


def make_keys(directory: Path) -> Keys:
    host_key = keygen(directory / "host_key")
    client_key = keygen(directory / "client_key")
    authorized = directory / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    return Keys(directory, host_key, client_key, authorized)


# A second port every test sshd also listens on; nothing listens on ALT_PORT + 1.
ALT_PORT = 2222


@dataclass
class Sshd:
    address: str
    process: subprocess.Popen[str]
    log: list[str]

    @property
    def destination(self) -> str:
        return f"root@{self.address}"


@contextlib.contextmanager
def running_sshd(host: Host, keys: Keys) -> Iterator[Sshd]:
    """sshd on ``host`` (a namespace), listening on its address, ports 22 and ALT_PORT.

    Resource handling: sshd is ended and reaped on exit; sessions still open are ended by
    the namespace network's close, which kills whatever still runs inside.
    """
    # Debian's sshd refuses to start without its privilege separation directory.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    config = keys.directory / f"sshd_config_{host.address}"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host.address}",
                "Port 22",
                f"Port {ALT_PORT}",  # what `--ssh-port` is tested with
                f"HostKey {keys.host_key}",
                "PidFile none",
                f"AuthorizedKeysFile {keys.authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",  # the key files live in a pytest temporary directory
                "PrintMotd no",
                "PrintLastLog no",
                "MaxStartups 64",
                "MaxSessions 64",
                # The far side must import this tree's chatbox/harness, like local children.
                f"SetEnv PYTHONPATH={REPO} PYTHONUNBUFFERED=1",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        host.command([SSHD, "-D", "-e", "-f", str(config)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    drain = None
    try:
        log = _wait_listening(process)
        # Keep reading its log: a full stderr pipe would stall sshd mid-login.
        drain = threading.Thread(target=log.extend, args=(process.stderr,), daemon=True)
        drain.start()
        yield Sshd(host.address, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if drain is not None:
            drain.join(WAIT_S)
        if process.stderr is not None:
            process.stderr.close()


def _wait_listening(process: subprocess.Popen[str]) -> list[str]:
    """Read sshd's log until it says it listens (the event to wait for, not a delay)."""
    assert process.stderr is not None
    seen = []
    while True:
        ready, _, _ = select.select([process.stderr], [], [], WAIT_S)
        line = process.stderr.readline() if ready else ""
        if not line:
            raise AssertionError(f"sshd did not start: {''.join(seen)}")
        seen.append(line)
        if "Server listening on" in line:
            return seen
