"""The ssh host kind against a real OpenSSH server, inside the harness's own namespaces.

The lab: a netns network; sshd in the server namespace (198.18.0.1) and in client
namespace 1 (198.18.0.3); the harness side (ssh itself) runs in client namespace 0, so
every ssh connection crosses the test network and nothing else.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest
from needs import needs
from netns_fixture import (
    WAIT_S,
    announced,
    child_env,
    needs_named,
    network_traces,
    read_line,
    started,
    wait_pid_gone,
)
from sshd_fixture import ALT_PORT, Keys, Sshd, keygen, make_keys, needs_sshd, running_sshd

from harness.checks import SPECIFIC
from harness.hosts import NetworkOptions
from harness.hosts.netns import NetnsNetwork
from harness.hosts.ssh import SshHost, split_destination

pytestmark = [pytest.mark.ssh, pytest.mark.netns, needs_named, needs_sshd]


@dataclass
class Lab:
    net: NetnsNetwork
    keys: Keys
    server: Sshd  # in the server namespace
    other: Sshd  # in client namespace 1

    @property
    def options(self) -> list[str]:
        return self.keys.ssh_options([self.server.address, self.other.address])

    def host(self, sshd: Sshd) -> SshHost:
        return SshHost(
            sshd.destination,
            identity=str(self.keys.client_key),
            options=self.options,
            python=sys.executable,
        )

    def local(self, argv: Sequence[str]) -> list[str]:
        """Run ``argv`` where the harness stands: client namespace 0."""
        return self.net.clients[0].command(argv)

    def network_options(self, **overrides: object) -> NetworkOptions:
        options = NetworkOptions(
            kind="ssh",
            clients=2,
            server_host=self.server.destination,
            client_hosts=[self.other.destination],
            ssh_identity=str(self.keys.client_key),
            ssh_options=self.options,
            ssh_python=sys.executable,
        )
        for name, value in overrides.items():
            setattr(options, name, value)
        return options


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    keys = make_keys(tmp_path_factory.mktemp("ssh"))
    with (
        NetnsNetwork(client_hosts=2, mode="named") as net,
        running_sshd(net.server, keys) as server,
        running_sshd(net.clients[1], keys) as other,
    ):
        yield Lab(net, keys, server, other)
    # Sessions, sshds and namespaces: nothing of the lab outlives it.
    assert network_traces(net).clean


WHERE_AM_I = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("198.18.0.2", 9))  # no packet is sent: this only picks the source address
print(s.getsockname()[0], os.isatty(0), os.environ.get("PYTHONUNBUFFERED"))
sys.exit(int(sys.argv[1]))
"""


def test_SshHost_runs_the_command_on_the_far_host_and_returns_its_status(lab: Lab) -> None:
    host = lab.host(lab.server)
    done = subprocess.run(
        lab.local(host.command([host.python, "-c", WHERE_AM_I, "3"])),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == [lab.server.address, "False", "1"]


def test_SshHost_tty_gives_a_terminal_without_echo(lab: Lab) -> None:
    """-tt: the far side has a terminal, and what we type is not echoed back to us, even
    when our own terminal had echo on (ssh copies its modes to the far pty)."""
    host = lab.host(lab.other)
    script = "import os; print('ready'); line = input(); print('tty', os.isatty(0), 'got', line)"
    argv = lab.local(host.command([host.python, "-c", script], tty=True))
    child = pexpect.spawn(argv[0], argv[1:], echo=True, timeout=WAIT_S)
    try:
        child.expect("ready")  # type only once the far side runs, as a user would
        child.sendline("secret-token-42")
        child.expect(pexpect.EOF)
        output = child.before.decode()
    finally:
        child.close(force=True)
    assert "tty True got secret-token-42" in output
    assert output.count("secret-token-42") == 1, output


# Far side: print our pid and a forked child's, then block until ended from outside.
BLOCKER = """
import os, select
child = os.fork()
if child == 0:
    select.select([], [], [])
print(os.getpid(), child, flush=True)
select.select([], [], [])
"""


@pytest.mark.parametrize("tty", [False, True], ids=["notty", "tty"])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_SshHost_remote_processes_end_with_the_session(lab: Lab, tty: bool, how: int) -> None:
    """Ending the local ssh (even by kill -9) ends the remote command and its children."""
    host = lab.host(lab.server)
    argv = lab.local(host.command([host.python, "-c", BLOCKER], tty=tty))
    if tty:
        local = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=WAIT_S)
        local.expect(rb"(\d+) (\d+)\r?\n")
        pids = [int(p) for p in local.match.groups()]
        os.kill(local.pid, how)
        local.close(force=True)
    else:
        with started(argv) as proc:
            pids = [int(p) for p in read_line(proc.stdout).split()]
            os.kill(proc.pid, how)
    for pid in pids:
        assert wait_pid_gone(pid), f"remote process {pid} outlived its ssh session"


# Run where the harness stands: open the ssh network, print its report or its refusal.
OPEN_SOURCE = """
import json, sys
from harness.hosts import NetworkOptions, open_network
from harness.hosts.base import HostError
options = NetworkOptions(**json.loads(sys.argv[1]))
try:
    with open_network(options) as net:
        print(json.dumps(net.describe()))
except HostError as exc:
    print("refused:", exc)
"""


def open_from_lab(lab: Lab, options: NetworkOptions) -> str:
    done = subprocess.run(
        lab.local([sys.executable, "-c", OPEN_SOURCE, json.dumps(options.__dict__)]),
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_SshNetwork_reports_where_the_server_listens_and_the_round_trip(lab: Lab) -> None:
    report = json.loads(open_from_lab(lab, lab.network_options()))
    assert report["kind"] == "ssh"
    assert report["listen_address"] == "0.0.0.0"
    # The address the server's sshd saw us arrive at: reachable from the test network.
    assert report["connect_address"] == lab.server.address
    assert report["server"]["host"] == lab.server.destination
    assert [c["address"] for c in report["clients"]] == [lab.other.address]
    assert report["round_trip_ms"] is not None and report["round_trip_ms"] > 0


def test_SshNetwork_refuses_an_unauthorised_key_in_one_line(lab: Lab, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    out = open_from_lab(lab, lab.network_options(ssh_identity=str(stranger)))
    assert out.startswith(f"refused: ssh: cannot use {lab.server.destination}:")
    assert "Permission denied" in out
    assert len(out.splitlines()) == 1


def test_SshNetwork_refuses_an_unknown_host_key_instead_of_asking(lab: Lab) -> None:
    out = open_from_lab(lab, lab.network_options(ssh_options=["GlobalKnownHostsFile=/dev/null"]))
    assert out.startswith("refused: ssh: cannot use")
    assert "Host key verification failed" in out


def test_chat_across_ssh_hosts(lab: Lab) -> None:
    """The chat server on one ssh host, `nc` clients on another, both through ssh."""
    server_host, client_host = lab.host(lab.server), lab.host(lab.other)
    server_argv = [server_host.python, "-m", "chatbox.server", "0", "--host", "0.0.0.0"]
    with announced(lab.local(server_host.command(server_argv))) as (server, number):
        assert server.announced == ("0.0.0.0", number), server.announce_line
        port = str(number)
        parties = []
        try:
            for _ in range(2):
                argv = lab.local(client_host.command(["nc", lab.server.address, port], tty=True))
                party = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=WAIT_S)
                parties.append(party)
                party.expect(r"\* welcome ")
            alice, bob = parties
            alice.sendline("over ssh")
            bob.expect(r"<guest\d+> over ssh")
            bob.sendline("and back")
            alice.expect(r"<guest\d+> and back")
        finally:
            for party in parties:
                party.close(force=True)


def run_harness_over_ssh(
    lab: Lab, tmp: Path, *args: str, identity_option: bool = True
) -> tuple[int, dict[str, Any], str]:
    """`python -m harness.run --hosts ssh` as a user runs it, from client namespace 0.
    ``identity_option``: name the key with ``--ssh-option`` (else the caller passes
    ``--ssh-identity``)."""
    report = tmp / "report.json"
    argv = [sys.executable, "-m", "harness.run", "--hosts", "ssh", "--quiet"]
    argv += ["--server-host", lab.server.destination, "--client-host", lab.other.destination]
    options = list(lab.options)
    if identity_option:
        options += [f"IdentityFile={lab.keys.client_key}", "IdentitiesOnly=yes"]
    for option in options:
        argv += ["--ssh-option", option]
    done = subprocess.run(
        lab.local([*argv, "--json", str(report), *args]),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=150,
        check=False,
    )
    doc = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, doc, done.stdout + done.stderr


@pytest.mark.parametrize("impair", ["", "delay=10ms,jitter=2ms,slice=3"])
def test_harness_scenario_across_ssh_hosts(lab: Lab, tmp_path: Path, impair: str) -> None:
    """A whole harness run with `--hosts ssh`: server on one sshd's host, clients on
    another's, the harness itself on a third namespace."""
    args = ["--scenario", "duplex", "--messages", "40"]
    if impair:
        args += ["--impair", impair]
    code, doc, output = run_harness_over_ssh(lab, tmp_path, *args)
    assert code == 0, output
    network = doc["runs"][0]["network"]
    assert network["kind"] == "ssh"
    assert network["server"]["host"] == lab.server.destination
    assert network["connect_address"] == lab.server.address
    assert [c["host"] for c in network["clients"]] == [lab.other.destination]
    assert network["round_trip_ms"] > 0
    if impair:  # each way lags at least delay - jitter = 8 ms: a round trip, 16 ms or more
        assert network["round_trip_proxy_ms"] >= 16


needs_cluster = needs(
    None
    if shutil.which("redis-server") and importlib.util.find_spec("redis")
    else "redis-server and redis-py are needed for a cluster"
)


@needs_cluster
def test_harness_cluster_across_ssh_hosts(lab: Lab, tmp_path: Path) -> None:
    """--cluster 2 over ssh: the redis-server and node 0 on the server's host, node 1 on
    the --node-host, the clients spread over both; one order at every receiver."""
    args = ["--scenario", "broadcast", "--messages", "40", "--cluster", "2"]
    args += ["--node-host", lab.other.destination, "--ssh-python", sys.executable]
    code, doc, output = run_harness_over_ssh(lab, tmp_path, *args)
    assert code == 0, output
    network = doc["runs"][0]["network"]
    nodes = network["cluster"]["nodes"]
    assert [n["address"] for n in nodes] == [lab.server.address, lab.other.address]
    assert network["cluster"]["url"].startswith(f"redis://{lab.server.address}:")
    statuses = {c["name"]: c["status"] for c in doc["runs"][0]["checks"]}
    assert statuses["same order at every receiver"] == "pass"


@needs_cluster
def test_failover_across_ssh_hosts(lab: Lab, tmp_path: Path) -> None:
    """failover over ssh: node 1, on the --node-host, is killed with SIGKILL through a
    second ssh session (its far process group: no word to anyone); the clients on node
    0 lose nothing and see its clients leave."""
    args = ["--scenario", "failover", "--cluster", "2", "--messages", "10"]
    args += ["--node-host", lab.other.destination, "--ssh-python", sys.executable]
    code, doc, output = run_harness_over_ssh(lab, tmp_path, *args)
    assert code == 0, output
    statuses = {c["name"]: c["status"] for c in doc["runs"][0]["checks"]}
    assert "fail" not in statuses.values(), statuses
    # The failover's own checks: every survivor saw the killed node's clients leave,
    # and lost nothing that had reached anyone.
    specific = next(c for c in doc["runs"][0]["checks"] if c["name"] == SPECIFIC)
    assert specific["status"] == "pass", specific
    for said in ("the failed node's clients left", "nothing appended is lost"):
        assert said in specific["detail"], specific
    killed = doc["runs"][0]["network"]["cluster"]
    assert killed["nodes"][1]["address"] == lab.other.address, killed


def test_harness_ssh_flags_port_identity_python_and_server_address(
    lab: Lab, tmp_path: Path
) -> None:
    """--ssh-port, --ssh-identity, --ssh-python and --server-address reach ssh and the run:
    the key is given only by --ssh-identity, the sshds are reached on their second port."""
    flags = ["--ssh-port", str(ALT_PORT), "--ssh-identity", str(lab.keys.client_key)]
    flags += ["--ssh-python", sys.executable, "--server-address", lab.server.address]
    args = ["--scenario", "duplex", "--messages", "20", *flags]
    code, doc, output = run_harness_over_ssh(lab, tmp_path, *args, identity_option=False)
    assert code == 0, output
    network = doc["runs"][0]["network"]
    assert network["connect_address"] == lab.server.address
    command = doc["runs"][0]["server"]["command"]  # the local ssh command line
    assert f"-p {ALT_PORT}" in command and f"-i {lab.keys.client_key}" in command
    assert sys.executable in command


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--ssh-port", str(ALT_PORT + 1)], "no sshd on that port"),
        (["--ssh-python", "/nonexistent/python3"], "no such interpreter there"),
    ],
)
def test_harness_ssh_flags_that_cannot_work_are_a_setup_error(
    lab: Lab, tmp_path: Path, flags: list[str], why: str
) -> None:
    code, _, output = run_harness_over_ssh(lab, tmp_path, "--messages", "5", *flags)
    assert code == 2, f"{why}: {output}"
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("text", "expected"),
    [("root@198.18.0.1", ("root", "198.18.0.1")), ("box", (None, "box")), ("a@b@c", ("a@b", "c"))],
)
def test_split_destination(text: str, expected: tuple[str | None, str]) -> None:
    assert split_destination(text) == expected
