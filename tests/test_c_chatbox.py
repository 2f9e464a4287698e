"""The harness holds another implementation to the same checks: the classic C chat box.

examples/c_chatbox/ is the "chat box using TCP/IP socket programming" exercise done in
plain C (a poll() relay and a full-duplex client). Each test compiles it with the C
compiler on this machine and runs `python -m harness.run` against it exactly as its
README tells a user to: with this project's client and with the C client. The generic
checks must pass and this project's own promises must be reported n/a, and a build of
the same server with the classic per-chunk prefixing bug must fail "payload intact".
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from faulty_relays import ROOT, Outcome, run_harness
from needs import needs

from harness.daemon import Daemon, Readiness

CC = shutil.which("cc") or shutil.which("gcc")
SOURCE = Path(ROOT) / "examples" / "c_chatbox"
# The examples promise warning-free C99/POSIX; -Werror makes that promise a test.
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"]
# What every implementation must get right, whatever its decoration or design.
GENERIC = [
    "no loss",
    "no duplicates",
    "payload intact",
    "per-sender FIFO",
    "bounded time",
    "server survived",
    "nothing left running",
]
# (scenario, extra harness arguments): small runs, a few parties where it matters.
SCENARIOS = [
    ("duplex", ["--messages", "40"]),
    ("broadcast", ["--clients", "4", "--messages", "30"]),
    ("crash", ["--messages", "30"]),
    ("bad-input", ["--messages", "20"]),
]
EXIT_WAIT_S = 10  # bound for a C process to act on EOF or a signal; it takes milliseconds

pytestmark = needs(None if CC else "no C compiler (cc or gcc) on PATH")


@dataclass(frozen=True)
class Build:
    server: str
    client: str
    buggy_server: str  # -DPREFIX_PER_CHUNK: prefixes each recv() chunk, not each line

    def server_cmd(self, server: str | None = None) -> str:
        return f"{server or self.server} {{port}} {{host}}"

    def client_cmd(self) -> str:
        return f"{self.client} {{port}} {{host}}"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """server.c and client.c compiled once per module (per xdist worker) into a tmp dir."""
    out = tmp_path_factory.mktemp("c_chatbox")

    def compile_(name: str, source: str, *flags: str) -> str:
        target = str(out / name)
        argv = [str(CC), *CFLAGS, *flags, "-o", target, str(SOURCE / source)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed:\n{done.stderr}")
        return target

    return Build(
        server=compile_("server", "server.c"),
        client=compile_("client", "client.c"),
        buggy_server=compile_("server-per-chunk", "server.c", "-DPREFIX_PER_CHUNK"),
    )


def assert_generic_checks_pass(out: Outcome, scenario: str) -> None:
    assert out.code == 0, out.stdout + out.stderr
    for run in range(len(out.report["runs"])):
        statuses = out.statuses(run)
        assert {name: statuses[name] for name in GENERIC} == dict.fromkeys(GENERIC, "pass")
        if scenario == "duplex":
            assert statuses["full duplex"] == "pass"
        if scenario == "broadcast":  # the only one where two receivers share two senders
            assert statuses["same order at every receiver"] == "pass"
        # Names, notices, '! line too long' wording: this project's promises, not theirs.
        assert statuses["this project's server"] == "n/a"
        # SIGTERM at cleanup: the C server closes everything and exits 0.
        assert out.report["runs"][run]["server"]["exit"] == "exit 0"


@pytest.mark.parametrize(("scenario", "args"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_c_server_with_our_client_passes(
    build: Build, tmp_path: Path, scenario: str, args: list[str]
) -> None:
    out = run_harness(
        str(tmp_path), "--server-cmd", build.server_cmd(), "--scenario", scenario, *args
    )
    assert_generic_checks_pass(out, scenario)


@pytest.mark.parametrize(("scenario", "args"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_c_server_with_c_client_passes(
    build: Build, tmp_path: Path, scenario: str, args: list[str]
) -> None:
    out = run_harness(
        str(tmp_path),
        "--server-cmd", build.server_cmd(),
        "--client-cmd", build.client_cmd(),
        "--scenario", scenario,
        *args,
    )  # fmt: skip
    assert_generic_checks_pass(out, scenario)
    parties = out.report["runs"][0]["parties"]
    # The byte-exact parties (bad-input's, the bursts) are the harness's own raw client.
    ours = {name: p for name, p in parties.items() if p["command"].startswith(build.client)}
    assert set(parties) - set(ours) <= {"bad", "burst"}
    # Asked to leave with end of input, the C client half-closes, drains and exits 0;
    # only the party the crash scenario killed -9 may end otherwise.
    exits = {name: p["exit"] for name, p in ours.items() if name != "victim"}
    assert exits == dict.fromkeys(exits, "exit 0")
    assert len(exits) >= 2


def test_c_server_reassembles_lines_the_network_cut(build: Build, tmp_path: Path) -> None:
    """The impairment proxy forwards 5 bytes per write, so nearly every recv() ends
    mid-line: the server's per-client line buffer must still relay whole lines."""
    out = run_harness(
        str(tmp_path),
        "--server-cmd", build.server_cmd(),
        "--client-cmd", build.client_cmd(),
        "--scenario", "broadcast", "--clients", "4", "--messages", "30",
        "--impair", "slice=5",
    )  # fmt: skip
    assert_generic_checks_pass(out, "broadcast")


def test_harness_catches_the_classic_per_chunk_prefix_bug(build: Build, tmp_path: Path) -> None:
    """The classic C relay bug: "<userN> " before whatever one recv() returned. TCP is a
    byte stream, so under load a chunk ends mid-line and the prefix lands inside the next
    line. (In 45 of 45 runs of these arguments it broke lines; --repeat 2 for margin.)"""
    args = ["--scenario", "broadcast", "--clients", "4", "--messages", "100", "--repeat", "2"]
    server = build.server_cmd(build.buggy_server)
    out = run_harness(str(tmp_path), "--server-cmd", server, "--settle", "0.5", *args)
    assert out.code == 1, out.stdout + out.stderr
    assert "payload intact" in out.failed(), out.stdout
    assert "FAIL payload intact" in out.stdout
    assert "first offending message" in out.stdout


# -- the C client on its own: the exit statuses its README promises ---------------------


def start_c_server(build: Build) -> tuple[Daemon, int]:
    """The C server on a free loopback port, once it has announced that port (started as
    the harness starts a server: its own process group, its announce line, its stderr)."""
    server = Daemon("C server", [build.server, "0", "127.0.0.1"])
    server.start()
    try:
        deadline = time.monotonic() + EXIT_WAIT_S
        port = server.wait_ready(Readiness("line"), 0, lambda _: False, deadline)
    except BaseException:
        server.stop()
        raise
    assert server.announce_line.startswith("listening on 127.0.0.1:"), server.announce_line
    return server, port


def stop(server: Daemon) -> int:
    """SIGTERM to the server alone, then its exit status (its group is ended and reaped
    either way; SIGKILL if it ignores the request)."""
    proc = server.proc
    assert proc is not None
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(EXIT_WAIT_S)
    finally:
        server.stop()


def run_client(build: Build, port: int, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [build.client, str(port), "127.0.0.1"],
        input=stdin, capture_output=True, text=True, timeout=EXIT_WAIT_S, check=False,
    )  # fmt: skip


def test_c_client_delivers_piped_lines_and_exits_0_at_end_of_input(build: Build) -> None:
    server, port = start_c_server(build)
    try:
        # A raw listener joins first, so the client's lines have a recipient.
        with socket.create_connection(("127.0.0.1", port), timeout=EXIT_WAIT_S) as listener:
            done = run_client(build, port, "one\ntwo\nno newline at the end")
            assert done.returncode == 0, done.stderr
            assert done.stderr == ""
            lines = listener.makefile("rb")  # buffered: whole lines, however TCP cut them
            received = [lines.readline() for _ in range(3)]
        # The unterminated last line still counts as a line, and arrives as one.
        assert received == [b"<user2> one\n", b"<user2> two\n", b"<user2> no newline at the end\n"]
    finally:
        assert stop(server) == 0


def test_c_client_exits_1_with_one_line_when_the_server_closes(build: Build) -> None:
    server, port = start_c_server(build)
    # The witness joins first, so the client's line has a recipient when it arrives.
    witness = socket.create_connection(("127.0.0.1", port), timeout=EXIT_WAIT_S)
    client = subprocess.Popen(
        [build.client, str(port), "127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Proof the client is connected and talking: its line reaches the witness.
        assert client.stdin is not None
        client.stdin.write("are you there\n")
        client.stdin.flush()
        assert witness.makefile("rb").readline() == b"<user2> are you there\n"
        assert stop(server) == 0  # SIGTERM: a clean exit that closes every connection
        _, err = client.communicate(timeout=EXIT_WAIT_S)
        assert client.returncode == 1
        assert err.splitlines() == [f"client: the server closed the connection (127.0.0.1:{port})"]
    finally:
        witness.close()
        stop(server)
        if client.poll() is None:
            client.kill()
        client.communicate()


def test_c_client_exits_1_with_one_line_when_it_cannot_connect(build: Build) -> None:
    # A bound socket that does not listen: this port refuses connections while we hold it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = run_client(build, port, "")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"client: cannot connect (127.0.0.1:{port}): Connection refused"
    ]


@pytest.mark.parametrize("program", ["server", "client"])
def test_c_programs_refuse_bad_usage_with_exit_2(build: Build, program: str) -> None:
    binary = getattr(build, program)
    done = subprocess.run(
        [binary, "not-a-port"], capture_output=True, text=True, timeout=EXIT_WAIT_S, check=False
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"usage: {program} PORT")
