"""The harness against a cluster, as a user runs it: ``python -m harness.run --cluster N``.

A real redis-server and real nodes, on loopback and across namespaces; the same checks
as for one server, with the parties spread over the nodes; the failover scenario passes
on this project's cluster and fails on clusters broken on purpose (a node that loses
lines, a lease so long that a dead node's clients never leave in time); and nothing is
left behind - no namespace, no process - after a pass, a failure or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from needs import needs
from netns_fixture import REPO, child_env, needs_netns

from harness.hosts.namespaces import list_named
from harness.processes import children_of
from harness.scenarios import SCENARIOS

REDIS = shutil.which("redis-server")
needs_redis = needs(
    None
    if REDIS and importlib.util.find_spec("redis")
    else "redis-server and redis-py are needed (apt-get install redis-server; "
    "pip install 'chatbox[cluster]')"
)
pytestmark = needs_redis

RUN_TIMEOUT_S = 180.0
SUBNET = "198.18.40.0/24"  # not the default: never the same addresses as other runs
LOSSY_NODE = "{python} tests/lossy_node.py {port} {host} --inner chatbox.server {server_options}"
# A node whose name lease is a minute: a killed node's clients cannot leave in time.
SLOW_LEASE = "{python} -m chatbox.server {port} --host {host} {server_options} --cluster-lease 60"


def run_harness(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    report = tmp / "report.json"
    argv = [sys.executable, "-m", "harness.run", "--quiet", "--json", str(report), *args]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env or child_env(),
        cwd=REPO,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    doc = json.loads(report.read_text()) if report.exists() else {}
    return done.returncode, doc, done.stdout + done.stderr


def failed(doc: Any) -> set[str]:
    return {c["name"] for c in doc["runs"][0]["checks"] if c["status"] == "fail"}


def check(doc: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in doc["runs"][0]["checks"] if c["name"] == name)
    return found


def cluster_processes(doc: Any) -> list[int]:
    """Processes on this machine whose command line names the run's redis-server port
    (the store itself and every node given its URL): none may outlive the run."""
    port = doc["runs"][0]["network"]["cluster"]["url"].rsplit(":", 1)[1].split("/")[0]
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            if any(b"redis" in a for a in argv) and any(port.encode() in a for a in argv):
                found.append(int(entry.name))
    return found


def assert_spread(doc: Any, nodes: int) -> None:
    """The parties were spread over every node, and the nodes were different servers."""
    cluster = doc["runs"][0]["network"]["cluster"]
    assert len(cluster["nodes"]) == nodes
    assert len({(n["address"], n["port"]) for n in cluster["nodes"]}) == nodes
    where = [p["where"] for p in doc["runs"][0]["parties"].values()]
    for node in range(nodes):
        assert any(w.endswith(f"node {node}") for w in where), where


@pytest.mark.parametrize("scenario", [name for name in SCENARIOS if name != "failover"])
def test_every_scenario_passes_on_two_nodes_on_loopback(scenario: str, tmp_path: Path) -> None:
    code, doc, output = run_harness(
        tmp_path, "--scenario", scenario, "--cluster", "2", "--messages", "40"
    )
    assert code == 0, output
    assert_spread(doc, 2)
    if scenario == "broadcast":
        # The point of a cluster: receivers on different servers, one order.
        assert check(doc, "same order at every receiver")["status"] == "pass"
    assert cluster_processes(doc) == []


@needs_netns
@pytest.mark.netns
@pytest.mark.parametrize("scenario", ["duplex", "broadcast"])
def test_a_scenario_passes_on_two_nodes_across_namespaces(scenario: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "harness.run", "--quiet", "--json", str(tmp_path / "r.json")]
    argv += ["--scenario", scenario, "--hosts", "netns", "--subnet", SUBNET, "--cluster", "2"]
    proc = subprocess.Popen(
        [*argv, "--messages", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, output
    doc = json.loads((tmp_path / "r.json").read_text())
    network = doc["runs"][0]["network"]
    nodes = [n["namespace"] for n in network["nodes"]]
    store = network["store"]["namespace"]
    clients = {c["namespace"] for c in network["clients"]}
    # Every node, the store and the clients: each in a namespace of its own.
    assert len({*nodes, store, *clients}) == len(nodes) + 1 + len(clients)
    assert network["cluster"]["url"].startswith(f"redis://{network['store']['address']}:")
    assert_spread(doc, 2)
    assert list_named(f"cbx{proc.pid}-") == []
    assert cluster_processes(doc) == []


def test_failover_passes_on_this_project_s_cluster(tmp_path: Path) -> None:
    code, doc, output = run_harness(
        tmp_path, "--scenario", "failover", "--cluster", "2", "--messages", "80"
    )
    assert code == 0, output
    detail = check(doc, "this project's server")["detail"]
    assert "the failed node's clients left" in detail and "left (server lost)" in detail
    notes = " ".join(doc["runs"][0]["notes"])
    assert "killed node 1 of 2 (SIGKILL)" in notes
    # The report says where each node and the store ran.
    assert "cluster: 2 nodes (loopback at 127.0.0.1:" in output
    assert "cluster store: redis-server at redis://127.0.0.1:" in output
    assert cluster_processes(doc) == []


def test_failover_fails_a_node_that_loses_lines(tmp_path: Path) -> None:
    code, doc, output = run_harness(
        tmp_path,
        "--scenario",
        "failover",
        "--cluster",
        "2",
        "--messages",
        "80",
        "--settle",
        "1",
        "--server-cmd",
        LOSSY_NODE,
    )
    assert code == 1, output
    assert {"no loss", "this project's server"} <= failed(doc), output
    assert "nothing appended is lost: " in check(doc, "this project's server")["detail"]
    assert cluster_processes(doc) == []


def test_failover_fails_when_the_dead_node_s_clients_never_leave(tmp_path: Path) -> None:
    args = ["--scenario", "failover", "--cluster", "2", "--cluster-lease", "3"]
    code, doc, output = run_harness(tmp_path, *args, "--messages", "40", "--server-cmd", SLOW_LEASE)
    assert code == 1, output
    assert failed(doc) == {"this project's server"}, output
    detail = check(doc, "this project's server")["detail"]
    assert "the failed node's clients left: not within" in detail and "never saw" in detail


@needs_netns
@pytest.mark.netns
def test_failover_passes_across_namespaces(tmp_path: Path) -> None:
    code, doc, output = run_harness(
        tmp_path,
        "--hosts",
        "netns",
        "--subnet",
        SUBNET,
        "--scenario",
        "failover",
        "--cluster",
        "3",
        "--messages",
        "60",
    )
    assert code == 0, output
    assert_spread(doc, 3)
    assert cluster_processes(doc) == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--scenario", "failover"], "failover needs --cluster N with N >= 2"),
        (["--scenario", "failover", "--cluster", "1"], "failover needs --cluster N with N >= 2"),
        (["--node-host", "bob@box2"], "--node-host needs --hosts ssh and --cluster N"),
        (["--cluster", "2", "--server-cmd", "ncat -l {host} {port}"], "{server_options}"),
    ],
)
def test_an_unusable_cluster_run_is_said_in_one_line(
    args: list[str], said: str, tmp_path: Path
) -> None:
    code, _, output = run_harness(tmp_path, *args)
    assert code == 2, output
    assert said in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_a_missing_redis_server_is_said_in_one_line(tmp_path: Path) -> None:
    # A PATH without redis-server (the harness's own interpreter is named by full path).
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**child_env(), "PATH": str(bare)}
    code, _, output = run_harness(tmp_path, "--cluster", "2", env=env)
    assert code == 2, output
    assert output.strip().splitlines() == [
        "chatbox-harness: setup failed: --cluster needs redis-server, which is not installed "
        "here (Debian: apt-get install redis-server)"
    ]


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@needs_netns
@pytest.mark.netns
def test_ctrl_c_mid_run_ends_every_node_the_store_and_the_network(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "harness.run", "--quiet", "--hosts", "netns"]
    argv += ["--subnet", SUBNET, "--cluster", "2", "--scenario", "broadcast"]
    argv += ["--messages", "100000", "--timeout", "120"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=REPO
    )
    try:
        # Polling: another process's children appearing has no event to wait on. Once
        # both nodes (given the store's URL) and a client run, everything is up.
        deadline = time.monotonic() + 60
        seen: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            seen = _descendants(proc.pid)
            lines = [_cmdline(p) for p in seen]
            if sum(b"--cluster\0redis://" in c for c in lines) >= 2 and any(
                b"chatbox.client" in c for c in lines
            ):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the cluster never came up: {proc.communicate()}")
        assert any(b"redis-server" in _cmdline(p) for p in seen)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 2, out + err
    assert "interrupted" in err and "Traceback" not in err
    gone_by = time.monotonic() + 20
    while time.monotonic() < gone_by and any(_cmdline(p) for p in seen):
        time.sleep(0.1)  # the lifeline's reaping of a group is not ours to wait on
    assert [p for p in seen if _cmdline(p)] == []
    assert list_named(f"cbx{proc.pid}-") == []


def test_a_node_that_dies_unasked_fails_server_survived_naming_it(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    argv = [sys.executable, "-m", "harness.run", "--quiet", "--json", str(report)]
    argv += ["--cluster", "2", "--scenario", "broadcast", "--messages", "100000"]
    proc = subprocess.Popen(
        [*argv, "--timeout", "20", "--settle", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
    )
    try:
        # Polling: another process's children appearing has no event to wait on.
        deadline = time.monotonic() + 60
        nodes: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            found = _descendants(proc.pid)
            nodes = sorted(p for p in found if b"--cluster\0redis://" in _cmdline(p))
            if len(nodes) == 2 and any(b"chatbox.client" in _cmdline(p) for p in found):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the cluster never came up: {proc.communicate()}")
        os.kill(nodes[-1], signal.SIGKILL)  # the later one: node 1
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    doc = json.loads(report.read_text())
    assert "server survived" in failed(doc)
    assert "node 1 of 2: signal 9" in check(doc, "server survived")["detail"]
