"""The netns host kind: a real private network of namespaces, real traffic across it, and
nothing left behind - after a clean close, a failed run, Ctrl-C, or kill -9 of its owner."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from needs import missing
from netns_fixture import (
    WAIT_S,
    chat_server,
    child_env,
    kill_and_reap,
    needs_held,
    needs_named,
    needs_netns,
    needs_root,
    network_traces,
    read_line,
    started,
    traces,
    wait_pid_gone,
    worker_namespaces,
)

import harness
from harness.hosts import NetworkOptions, open_network
from harness.hosts.base import HostError
from harness.hosts.namespaces import JanitorLink, list_named
from harness.hosts.netns import NetnsNetwork, check_subnet

pytestmark = [pytest.mark.netns, needs_netns]

# Both backends where this machine has them: as root the named one is the default, and the
# unprivileged one (user namespaces) is what a non-root developer gets.
MODES = [pytest.param("named", marks=needs_named), pytest.param("held", marks=needs_held)]


@pytest.fixture(scope="module", autouse=True)
def no_namespace_outlives_the_module() -> Iterator[None]:
    """The leak check after every module: no namespace named for this worker is left."""
    yield
    assert worker_namespaces() == []


@pytest.fixture(params=MODES)
def net(request: pytest.FixtureRequest) -> Iterator[NetnsNetwork]:
    with NetnsNetwork(client_hosts=2, mode=request.param) as network:
        yield network
    assert network_traces(network).clean


# A server that tells each client the address it sees the client at.
WHO_SOURCE = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[2])):
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b"\\n")
    c.close()
"""

ASK_SOURCE = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(c.makefile().readline().strip())
"""


def test_NetnsNetwork_client_hosts_reach_the_server_from_their_own_addresses(
    net: NetnsNetwork,
) -> None:
    """Each client namespace is its own host: the server sees it at its own address."""
    server = net.server
    with started(server.command([sys.executable, "-c", WHO_SOURCE, server.address, "2"])) as who:
        port = read_line(who.stdout).strip()
        seen = []
        for client in net.clients:
            done = subprocess.run(
                client.command([sys.executable, "-c", ASK_SOURCE, net.connect_address, port]),
                capture_output=True,
                text=True,
                timeout=WAIT_S,
                env=child_env(),
                check=True,
            )
            seen.append(done.stdout.strip())
    assert seen == [c.address for c in net.clients]
    assert len(set(seen) | {server.address}) == 3
    subnet = ipaddress.ip_network("198.18.0.0/24")
    assert all(ipaddress.ip_address(a) in subnet for a in seen)


def test_NetnsNetwork_relays_chat_between_client_namespaces(net: NetnsNetwork) -> None:
    """A real chat server in the server namespace, `nc` clients in two client namespaces."""
    with chat_server(net.server, net.listen_address) as (_, port):
        parties = []
        try:
            for client in net.clients:
                argv = client.command(["nc", net.connect_address, str(port)])
                party = pexpect.spawn(argv[0], argv[1:], echo=False, timeout=WAIT_S)
                parties.append(party)
                party.expect(r"\* welcome ")
            alice, bob = parties
            token = f"across-namespaces-{os.getpid()}"
            alice.sendline(token)
            bob.expect(rf"<guest\d+> {token}")
            bob.sendline("and back")
            alice.expect(r"<guest\d+> and back")
        finally:
            for party in parties:
                party.close(force=True)


def test_NetnsNetwork_names_fit_and_are_unique_per_worker(net: NetnsNetwork) -> None:
    """Interface names obey the kernel's 15 characters; namespace names carry our pid."""
    for name in net.namespace_names:
        assert name.startswith(f"cbx{os.getpid()}-")
    interfaces = [h.interface for h in [net.server, *net.clients]]
    assert all(len(i) <= 15 for i in interfaces)
    assert len(set(interfaces)) == len(interfaces)
    with NetnsNetwork(client_hosts=1, mode=net.namespaces.mode) as other:
        assert not set(other.namespace_names) & set(net.namespace_names)
        assert other.link_tag != net.link_tag


def test_NetnsNetwork_measures_a_round_trip(net: NetnsNetwork) -> None:
    rtt = net.round_trip_ms()
    assert rtt is not None and rtt > 0
    report = net.describe()
    assert report["round_trip_ms"] == rtt
    assert report["kind"] == "netns"
    assert report["server"]["address"] == net.connect_address  # type: ignore[index]


def test_NetnsNetwork_uses_the_subnet_it_is_given() -> None:
    options = NetworkOptions(kind="netns", clients=3, subnet="198.19.7.16/28")
    with open_network(options) as network:
        hosts = [network.server, *network.clients]
        assert [h.address for h in hosts] == ["198.19.7.17", "198.19.7.18", "198.19.7.19"]


@pytest.mark.parametrize(
    ("subnet", "why"),
    [
        ("10.0.0.0/24", "must lie inside 198.18.0.0/15"),
        ("198.18.0.0/30", "too small"),
        ("not-a-net", "bad --subnet"),
        ("2001:db8::/64", "must lie inside"),
    ],
)
def test_check_subnet_refuses_with_a_reason(subnet: str, why: str) -> None:
    with pytest.raises(HostError, match=why):
        check_subnet(subnet, 3)


def test_close_kills_what_still_runs_inside_and_removes_everything() -> None:
    network = NetnsNetwork(client_hosts=1)
    inside = "import select; print('in', flush=True); select.select([],[],[])"
    stuck = subprocess.Popen(
        network.server.command([sys.executable, "-c", inside]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert stuck.stdout is not None
        assert stuck.stdout.readline() == "in\n"  # running inside, not still entering
        network.close()
        assert stuck.wait(timeout=WAIT_S) == -signal.SIGKILL
        assert network_traces(network).clean
        network.close()  # idempotent
    finally:
        if stuck.poll() is None:
            stuck.kill()
        stuck.communicate()
        network.close()  # when an assertion above failed before it


def test_a_failed_run_leaves_nothing() -> None:
    class CheckFailed(Exception):
        pass

    with (
        pytest.raises(CheckFailed),
        NetnsNetwork(client_hosts=2) as network,
        chat_server(network.server, network.listen_address),
    ):
        raise CheckFailed("a check failed mid-run")
    assert network_traces(network).clean


# The owner of a network in a separate process, so the test can kill it.
OWNER_SOURCE = """
import json, subprocess, sys
from harness.hosts.netns import NetnsNetwork
with NetnsNetwork(client_hosts=2, mode=sys.argv[1]) as net:
    inner = subprocess.Popen(
        net.server.command([sys.executable, "-c", "import select; select.select([],[],[])"])
    )
    print(json.dumps({"run_id": net.run_id, "link_tag": net.link_tag,
                      "janitor": net.namespaces.janitor.pid, "inner": inner.pid,
                      "names": net.namespace_names}), flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_owner_killed_leaves_nothing(mode: str, how: int) -> None:
    """kill -9 (no code runs) or Ctrl-C of the harness: the janitor still cleans up,
    including a process left running inside a namespace."""
    with started([sys.executable, "-c", OWNER_SOURCE, mode]) as owner:
        info = json.loads(read_line(owner.stdout))
        assert len(traces(info["run_id"], info["link_tag"], info["janitor"]).namespaces) == (
            4 if mode == "named" else 0
        )
        kill_and_reap(owner, how)
    assert wait_pid_gone(info["janitor"]), "janitor did not finish"
    assert wait_pid_gone(info["inner"]), "process inside a namespace survived"
    assert traces(info["run_id"], info["link_tag"], info["janitor"]).clean


def test_open_network_reports_an_unusable_mode() -> None:
    with pytest.raises(HostError, match="unknown namespace mode"):
        open_network(NetworkOptions(kind="netns", clients=2, netns_mode="sideways"))


def _readable_harness(into: Path) -> dict[str, str]:
    """An environment whose PYTHONPATH is a copy of the harness package that any user may
    read: the installed one may sit in a folder only root can enter (tox's is mode 700)."""
    into.chmod(0o755)
    shutil.copytree(
        Path(harness.__file__).parent, into / "harness", ignore=shutil.ignore_patterns("*.pyc")
    )
    for folder in [into, *into.rglob("*")]:
        folder.chmod(0o755 if folder.is_dir() else 0o644)
    env = child_env()
    env["PYTHONPATH"] = str(into)
    return env


def _python_for(prefix: list[str], env: dict[str, str]) -> str:
    """An interpreter the unprivileged user may run inside its user namespace (ours may
    live under /root, out of its reach)."""
    for python in ("/usr/bin/python3", sys.executable):
        probe = subprocess.run(
            [*prefix, "unshare", "--user", "--map-root-user", python, "-c", "import harness"],
            capture_output=True,
            env=env,
            cwd="/",
            timeout=WAIT_S,
            check=False,
        )
        if probe.returncode == 0:
            return python
    missing("no Python interpreter that an unprivileged user can run and import from")


@needs_root
def test_unprivileged_user_gets_namespaces_or_a_clear_reason() -> None:
    """Without root: user namespaces if the kernel allows them, else one clear line."""
    script = (
        "from harness.hosts.netns import NetnsNetwork\n"
        "from harness.hosts.base import HostError\n"
        "try:\n"
        "    with NetnsNetwork(client_hosts=1) as n:\n"
        "        print('ok', n.namespaces.mode, n.round_trip_ms() is not None)\n"
        "except HostError as e:\n"
        "    print('refused', e)\n"
    )
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with tempfile.TemporaryDirectory(prefix="cbx-unpriv-") as tmp:
        env = {**_readable_harness(Path(tmp)), "HOME": "/tmp"}
        python = _python_for(as_nobody, env)
        done = subprocess.run(
            [*as_nobody, python, "-c", script],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            env=env,
            cwd="/",
            check=False,
        )
    out = done.stdout.strip()
    assert out in ("ok held True",) or out.startswith(
        "refused netns needs root or unprivileged user namespaces"
    ), (out, done.stderr)


@needs_named
@pytest.mark.parametrize("ending", ["eof", "sigterm"])
def test_janitor_removes_what_it_was_told_about(ending: str) -> None:
    """The janitor alone: told of a namespace, it removes it when its pipe closes or it
    is asked to stop with SIGTERM; it refuses malformed requests."""
    name = f"cbx{os.getpid()}-jt{ending}"
    janitor = JanitorLink()
    try:
        with pytest.raises(HostError, match="bad name"):
            janitor.request("netns ../etc")
        assert janitor.request(f"netns {name}") == "ok"
        assert list_named(name) == [name]
        with pytest.raises(HostError, match="ip netns add"):
            janitor.request(f"netns {name}")  # exists already: refused, with ip's reason
        if ending == "sigterm":
            janitor.process.send_signal(signal.SIGTERM)
            assert janitor.process.wait(timeout=WAIT_S) == 0
    finally:
        janitor.close()
    assert list_named(name) == []


def test_netem_is_used_where_the_kernel_has_it_else_says_why(net: NetnsNetwork) -> None:
    """delay=50ms on the links: a round trip takes at least 100 ms; or, where the kernel
    has no netem (or lacks `tc`), a one-line reason so the caller uses the proxy."""
    reason = net.netem("delay=50ms")
    if reason is not None:
        assert "netem" in reason or "tc" in reason
        assert "\n" not in reason
        assert net.describe().get("link_impairment") is None
        return
    rtt = net.round_trip_ms()
    assert rtt is not None and rtt >= 100
    assert net.describe()["link_impairment"] == "netem delay 50000us 0us"


def test_netem_leaves_stream_toxics_to_the_proxy(net: NetnsNetwork) -> None:
    assert "need the TCP proxy" in str(net.netem("delay=5ms,slice=1"))


LEAKY_SESSION = """
from harness.hosts.netns import NetnsNetwork

def test_closes_its_network():
    with NetnsNetwork(client_hosts=1, mode="named"):
        pass

def test_forgets_to_close_its_network():
    NetnsNetwork.keep = NetnsNetwork(client_hosts=1, mode="named")  # never closed
"""


@needs_named
def test_a_session_that_leaves_namespaces_fails_loudly_naming_them(tmp_path: object) -> None:
    """The plugin's end-of-session leak check: a test that builds a network and never
    closes it makes the session fail, with every leftover namespace named."""
    from pathlib import Path

    inner = Path(str(tmp_path)) / "test_leaky.py"
    inner.write_text(LEAKY_SESSION)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
        capture_output=True, text=True, env=child_env(), cwd=str(tmp_path), timeout=120,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "2 passed, 1 error" in output
    match = re.search(r"left behind by this test session: (cbx(\d+)-[^ ,]+)", output)
    assert match, output
    # The inner session's own janitor removes them once that process has gone.
    prefix = f"cbx{match.group(2)}-"
    deadline = time.monotonic() + WAIT_S
    while list_named(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling: another process's cleanup has no event to wait on
    assert list_named(prefix) == []
