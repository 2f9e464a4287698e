"""TLS on a real server (`--tls-cert`, `--tls-key`), in both modes, with real TLS clients:
Python's ssl, `openssl s_client`, `ncat --ssl` and `chatbox-client --tls`.

Certificates are made per test with openssl (tests/tls_certs.py).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_parties import Party, child_env, client_argv
from live_server import (
    TRICKLED,
    WAIT,
    Peer,
    ServerProcess,
    kernel_send_buffer,
    running_server,
    send_in_background,
    trickle_wakeups,
    wait_until,
)
from needs import missing
from tls_certs import make_certificate, tls_peer

from chatbox import protocol


@pytest.fixture
def server(mode: str, certificate: tuple[Path, Path]) -> Iterator[ServerProcess]:
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--tls-cert", str(cert)]
    args += ["--tls-key", str(key), "--tls-handshake-timeout", "2"]
    with running_server(*args) as srv:
        yield srv


@pytest.fixture
def parties() -> Iterator[list[Party]]:
    started: list[Party] = []
    try:
        yield started
    finally:
        for party in started:
            party.close()


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    return path


def joined(peer: Peer) -> str:
    """Read ``peer``'s welcome; the name it was given."""
    line = peer.line()
    assert line.startswith("* welcome "), line
    return line.split()[2].rstrip(";")


def test_tls_clients_chat_in_order(server: ServerProcess, certificate: tuple[Path, Path]) -> None:
    alice = tls_peer(server, certificate[0])
    alice_name = joined(alice)
    bob = tls_peer(server, certificate[0])
    bob_name = joined(bob)
    assert alice.line() == f"* {bob_name} joined"
    lines = b"".join(b"line %d\n" % i for i in range(3000))
    alice.send(lines)
    assert bob.lines(3000) == [f"<{alice_name}> line {i}" for i in range(3000)]
    bob.send(b"/who\n")
    assert bob.line() == f"* here (2): {alice_name}, {bob_name}"
    alice.send(b"/quit\n")
    assert alice.read_to_eof() == []  # the server ends the TLS stream cleanly
    assert bob.line() == f"* {alice_name} left (quit)"


def test_openssl_s_client_chats(
    server: ServerProcess, certificate: tuple[Path, Path], parties: list[Party]
) -> None:
    openssl = tool("openssl")
    argv = [openssl, "s_client", "-quiet", "-verify_return_error", "-CAfile"]
    argv += [str(certificate[0]), "-verify_ip", "127.0.0.1", "-connect", f"127.0.0.1:{server.port}"]
    party = Party(argv)
    parties.append(party)
    name = party.join()
    peer = tls_peer(server, certificate[0])
    peer_name = joined(peer)
    party.expect(rf"^\* {peer_name} joined$")
    party.send(b"hello from openssl\n")
    assert peer.line() == f"<{name}> hello from openssl"
    peer.send(b"hello to openssl\n")
    party.expect(rf"^<{peer_name}> hello to openssl$")


def test_ncat_ssl_chats(
    server: ServerProcess, certificate: tuple[Path, Path], parties: list[Party]
) -> None:
    ncat = tool("ncat")
    argv = [ncat, "-4", "--ssl", "--ssl-verify", "--ssl-trustfile", str(certificate[0])]
    party = Party([*argv, "localhost", str(server.port)])
    parties.append(party)
    name = party.join()
    peer = tls_peer(server, certificate[0])
    peer_name = joined(peer)
    party.send(b"hello from ncat\n")
    assert peer.line() == f"<{name}> hello from ncat"
    peer.send(b"hello to ncat\n")
    party.expect(rf"^<{peer_name}> hello to ncat$")
    party.close_stdin()  # ncat half-closes; the server ends the connection
    assert peer.line() == f"* {name} left (connection closed)"


def test_chatbox_client_over_tls_delivers_a_whole_pipe(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    peer = tls_peer(server, certificate[0])
    joined(peer)
    lines = "".join(f"piped {i}\n" for i in range(2000))
    proc = subprocess.run(
        client_argv(str(server.port), "127.0.0.1", "--tls-ca", str(certificate[0])),
        input=lines,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    name = proc.stdout.split()[2].rstrip(";")
    assert peer.line() == f"* {name} joined"
    assert peer.lines(2000) == [f"<{name}> piped {i}" for i in range(2000)]
    assert peer.line() == f"* {name} left (quit)"


def test_chatbox_client_over_tls_receives_while_it_types(
    server: ServerProcess, certificate: tuple[Path, Path], parties: list[Party]
) -> None:
    party = Party(client_argv(str(server.port), "localhost", "--tls-ca", str(certificate[0])))
    parties.append(party)
    name = party.join()
    peer = tls_peer(server, certificate[0])
    peer_name = joined(peer)
    # Both directions at once through the client's one TLS connection.
    peer.send(b"".join(b"to you %d\n" % i for i in range(500)))
    party.send(b"".join(b"to them %d\n" % i for i in range(500)))
    assert peer.lines(500) == [f"<{name}> to them {i}" for i in range(500)]
    party.expect(rf"^<{peer_name}> to you 499$")
    party.close_stdin()
    assert party.wait()[0] == 0


def test_a_plain_text_client_is_told_and_closed_and_others_go_on(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    member = tls_peer(server, certificate[0])
    member_name = joined(member)
    plain = server.connect()
    plain.send(b"hello, anyone?\n")
    assert plain.read_to_eof() == [protocol.TLS_REQUIRED.decode().rstrip("\n")]
    newcomer = tls_peer(server, certificate[0])
    newcomer_name = joined(newcomer)
    # The plain client never entered the room: the member hears of the newcomer only.
    assert member.line() == f"* {newcomer_name} joined"
    newcomer.send(b"/who\n")
    assert newcomer.line() == f"* here (2): {member_name}, {newcomer_name}"


def test_a_silent_client_is_closed_after_the_handshake_timeout(
    server: ServerProcess, certificate: tuple[Path, Path], mode: str
) -> None:
    member = tls_peer(server, certificate[0])
    member_name = joined(member)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    try:
        # The server closes it (the fixture's --tls-handshake-timeout is 2 s).
        assert silent.recv(100) == b""
    finally:
        silent.close()
    if mode == "fork":
        wait_until(lambda: len(server.workers()) == 1, "the silent client's worker to end")
    member.send(b"/who\n")
    assert member.line() == f"* here (1): {member_name}"


def test_a_half_handshake_never_holds_the_room(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    try:
        stuck.send(bytes([0x16, 0x03, 0x01]))  # the start of a ClientHello, then nothing
        alice = tls_peer(server, certificate[0])
        alice_name = joined(alice)
        bob = tls_peer(server, certificate[0])
        joined(bob)
        alice.send(b"not held up\n")
        assert bob.line() == f"<{alice_name}> not held up"
        assert stuck.recv(100) == b""  # then it is closed
    finally:
        stuck.close()


def test_descriptors_go_back_after_tls_clients_leave(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    first = tls_peer(server, certificate[0])
    joined(first)  # the hub is serving: its own descriptors are all open
    baseline = server.open_fds()
    peers = [tls_peer(server, certificate[0]) for _ in range(10)]
    for peer in peers:
        joined(peer)
    assert server.open_fds() > baseline
    for peer in peers:
        peer.close()
    wait_until(lambda: server.open_fds() == baseline, "the server's descriptors to go back")


def test_the_client_refuses_an_untrusted_certificate(server: ServerProcess) -> None:
    # The system's store does not know the test's self-signed certificate.
    proc = subprocess.run(
        client_argv(str(server.port), "127.0.0.1", "--tls"),
        input="never sent\n",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=WAIT,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"cannot connect to 127.0.0.1 port {server.port}: ")
    assert "certificate is not trusted: self-signed certificate" in proc.stderr
    assert "--tls-ca" in proc.stderr


def test_the_client_refuses_a_certificate_for_another_name(
    mode: str, tmp_path: Path, parties: list[Party]
) -> None:
    cert, key = make_certificate(tmp_path, "elsewhere", "DNS:chat.example.org")
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--tls-cert", str(cert)]
    with running_server(*args, "--tls-key", str(key)) as srv:
        proc = subprocess.run(
            client_argv(str(srv.port), "127.0.0.1", "--tls-ca", str(cert)),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=WAIT,
        )
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert "not trusted: ip address mismatch" in proc.stderr.lower()
        # --tls-insecure takes it anyway (and says nothing).
        party = Party(client_argv(str(srv.port), "127.0.0.1", "--tls-insecure"))
        parties.append(party)
        party.join()


def test_the_client_says_when_the_server_does_not_speak_tls(mode: str, tmp_path: Path) -> None:
    with running_server("0", "--host", "127.0.0.1", "--mode", mode) as srv:
        proc = subprocess.run(
            client_argv(str(srv.port), "127.0.0.1", "--tls-insecure"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=WAIT,
        )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    # What the plain server said instead is shown: its welcome.
    assert f"port {srv.port}: the server answered without TLS: * welcome guest1;" in proc.stderr


def test_a_bad_tls_ca_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for ca, why in [(tmp_path / "none.pem", "no such file"), (tmp_path / "junk.pem", "no PEM")]:
        proc = subprocess.run(
            client_argv("4242", "127.0.0.1", "--tls-ca", str(ca)),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=WAIT,
        )
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "files, why",
    [
        (("missing.crt", "server.key"), "cannot read"),
        (("server.key", "server.key"), "holds no PEM certificate"),
        (("server.crt", "server.crt"), "holds no usable PEM private key"),
        (("server.crt", "other.key"), "does not belong to the certificate"),
        (("server.crt", None), "--tls-cert and --tls-key go together"),
    ],
)
def test_unusable_certificate_files_are_one_line_and_exit_2(
    tmp_path: Path, files: tuple[str, str | None], why: str
) -> None:
    make_certificate(tmp_path)
    make_certificate(tmp_path, "other")
    cert, key = files
    argv = [sys.executable, "-m", "chatbox.server", "0", "--host", "127.0.0.1"]
    argv += ["--tls-cert", str(tmp_path / cert)]
    if key is not None:
        argv += ["--tls-key", str(tmp_path / key)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, env=child_env())
    assert proc.returncode == 2
    assert proc.stdout == ""  # it never listened
    assert proc.stderr.count("\n") == 1 and why in proc.stderr, proc.stderr
    assert proc.stderr.startswith("chatbox-server: ")


def test_shutdown_reaches_tls_clients_and_waits_for_no_handshake(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    members = [tls_peer(server, certificate[0]) for _ in range(3)]
    for member in members:
        joined(member)
    stuck = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    try:
        stuck.send(bytes([0x16, 0x03, 0x01]))  # a handshake that never goes on
        members[0].send(b"/who\n")
        members[0].expect("* here (3)")  # the stuck one is not in the room
        assert server.terminate() == 0
        for member in members:
            assert member.read_to_eof()[-1:] == ["* server shutting down"]
        assert stuck.recv(100) == b""
    finally:
        stuck.close()


def test_a_full_tls_server_is_understood_by_the_client(
    mode: str, certificate: tuple[Path, Path], parties: list[Party]
) -> None:
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--max-clients", "1"]
    with running_server(*args, "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        member = tls_peer(srv, cert)
        joined(member)
        status, out, err = _run_with_stdin_open(
            client_argv(str(srv.port), "127.0.0.1", "--tls-ca", str(cert))
        )
    # The refusal is said inside TLS, as a plain server says it in the clear: the client
    # shows it and that the server closed, and exits 1.
    assert (status, out, err) == (
        1,
        "! server full (max 1 clients)\n",
        "connection closed by server\n",
    )


def _run_with_stdin_open(argv: list[str]) -> tuple[int, str, str]:
    """Run a client whose stdin stays open (it must end on its own, not because its
    input ended); its exit status, stdout and stderr."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        status = proc.wait(WAIT)
        assert proc.stdout is not None and proc.stderr is not None
        return status, proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_a_full_tls_server_refuses_openssl_s_client_inside_tls(
    mode: str, certificate: tuple[Path, Path]
) -> None:
    openssl = tool("openssl")
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--max-clients", "1"]
    with running_server(*args, "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        member = tls_peer(srv, cert)
        name = joined(member)
        argv = [openssl, "s_client", "-quiet", "-verify_return_error", "-CAfile", str(cert)]
        argv += ["-verify_ip", "127.0.0.1", "-connect", f"127.0.0.1:{srv.port}"]
        _, out, err = _run_with_stdin_open(argv)
        # No handshake error: a verified TLS session whose only line is the refusal.
        assert out == "! server full (max 1 clients)\n", (out, err)
        assert "error" not in err.lower(), err
        member.send(b"/who\n")
        assert member.line() == f"* here (1): {name}"


def test_a_full_tls_server_tells_a_plain_text_client_in_plain_text(
    mode: str, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--max-clients", "1"]
    with running_server(*args, "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        member = tls_peer(srv, cert)
        joined(member)
        plain = srv.connect()
        plain.send(b"hello?\n")
        assert plain.read_to_eof() == ["! server full (max 1 clients)"]


def test_a_tls_client_that_stops_reading_is_cut_off_alone(
    mode: str, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    # The talker sends the sleeper alone more than the kernel and the TLS relay hold for
    # a reader that stopped (plus 2 MiB), then the room as much: the sleeper is owed
    # more than one whole stream beyond what its sockets hold, while the listener is
    # sent one stream only. So a hard bound of one whole stream cuts off the sleeper and
    # never a reader that keeps up, however far behind it falls on a busy machine.
    padding = "." * 500
    count = max(10_000, (kernel_send_buffer() + (3 << 20)) // len(padding) + 1)
    hard = count * (len(padding) + 40) + (256 << 10)
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--sendq", "65536"]
    args += ["--sendq-hard", str(hard), "--slow-timeout", "60"]
    args += ["--flood-lines", "0", "--flood-bytes", "0"]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    with running_server(*args) as srv:
        raw = socket.socket()
        # Before connecting: the window it offers is settled in the TCP handshake.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(WAIT)
        raw.connect(("127.0.0.1", srv.port))
        context = ssl.create_default_context(cafile=str(cert))
        sleeper = Peer(context.wrap_socket(raw, server_hostname="127.0.0.1"))
        sleeper_name = joined(sleeper)
        talker = tls_peer(srv, cert)
        talker_name = joined(talker)
        listener = tls_peer(srv, cert)
        joined(listener)
        talker.line()  # the listener joined; the sleeper reads nothing any more
        # First as many private lines for the sleeper alone, then the room's stream.
        private = "".join(f"/msg {sleeper_name} p{i} {padding}\n" for i in range(count))
        public = "".join(f"t{i} {padding}\n" for i in range(count))
        sending = send_in_background(talker, (private + public).encode())
        # The listener reads at full speed, as it must to keep up.
        got = listener.expect(f"<{talker_name}> t{count - 1} ")
        sending.join(WAIT)
        listener.send(b"/who\n")
        got += listener.expect("* here (2)")
        assert f"* {sleeper_name} left (too slow)" in got
        chat = [line for line in got if line.startswith("<")]
        assert chat == [f"<{talker_name}> t{i} {padding}" for i in range(count - 1)]
        sleeper.sock.settimeout(WAIT)
        sleeper.read_to_eof()  # its connection ends: the worker did not hang on to it
        if mode == "fork":
            wait_until(lambda: len(srv.workers()) == 2, "the sleeper's worker to end")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_tls_worker_owns_only_its_own_descriptors(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", "fork", "--tls-cert", str(cert)]
    with running_server(*args, "--tls-key", str(key)) as srv:
        peers = [tls_peer(srv, cert) for _ in range(3)]
        for peer in peers:
            joined(peer)
        wait_until(lambda: len(srv.workers()) == 3, "three workers")

        def held() -> dict[int, list[str]]:
            return {pid: os.listdir(f"/proc/{pid}/fd") for pid in srv.workers()}

        # stdin, stdout, stderr, its client, its channel, its relay: nothing of the others.
        try:
            wait_until(lambda: all(len(fds) == 6 for fds in held().values()), "workers")
        except AssertionError:
            raise AssertionError(f"workers hold more than their own: {held()}") from None


def test_a_first_line_sent_with_the_last_handshake_message_is_relayed(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    member = tls_peer(server, certificate[0])
    joined(member)
    # A client whose first line leaves in the same segment as its handshake's Finished
    # (memory BIOs, one send): the worker finds it already inside TLS, where no poll
    # can see it.
    context = ssl.create_default_context(cafile=str(certificate[0]))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        tls.write(b"sent with the handshake\n")
        sock.sendall(outgoing.read())  # Finished and the line, in one send
        newcomer = member.line().split()[1]
        assert member.line() == f"<{newcomer}> sent with the handshake"
    finally:
        sock.close()


def test_the_client_bridge_delivers_what_came_with_the_handshake(
    server: ServerProcess, certificate: tuple[Path, Path]
) -> None:
    from chatbox.client.tls import client_context, secure

    # Over TLS 1.2 the server's welcome tends to arrive with its Finished.
    for _ in range(5):
        context = client_context(str(certificate[0]), False)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        sock = secure(raw, "127.0.0.1", server.port, context)
        sock.settimeout(WAIT)
        peer = Peer(sock)
        try:
            joined(peer)
        finally:
            peer.close()


def test_a_refusal_by_address_is_said_inside_tls(mode: str, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", mode, "--max-per-ip", "1", "--exempt", "none"]
    with running_server(*args, "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        member = tls_peer(srv, cert)
        joined(member)
        second = tls_peer(srv, cert)  # the handshake verifies: the refusal is in TLS
        assert second.read_to_eof() == ["! too many connections from your address (max 1)"]


def test_the_client_bridge_ends_the_session_cleanly_when_a_quit_crosses_the_close(
    tmp_path: Path,
) -> None:
    """The server ends the TLS stream (a refusal, a shutdown) while the session has just
    written its `/quit` to the bridge: the session must see the server's close, not a
    reset (the bridge closing its end with the /quit unread reset it, and the client
    said "connection lost: connection reset by peer")."""
    from chatbox.client.tls import _bridge, _handshake, client_context
    from chatbox.tls_stream import TlsStream

    cert, key = make_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    closed = threading.Event()  # the server's close_notify is on its way
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.setblocking(False)
            tls = TlsStream(conn, server_context, server_side=True)
            with contextlib.suppress(OSError, ssl.SSLError):
                while not tls.handshake():
                    tls.flush()
                    select.select([conn], [], [], WAIT)
                    tls.pull()
                tls.close()  # close_notify right after the handshake
                tls.flush()
            closed.set()
            done.wait(WAIT)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    session, inner = socket.socketpair()
    try:
        stream = _handshake(raw, "127.0.0.1", port, client_context(str(cert), False), WAIT)
        assert closed.wait(WAIT)  # (on loopback it is in our socket once it was sent)
        session.sendall(b"/quit\n")  # typed as the end came
        bridge = threading.Thread(target=_bridge, args=(stream, inner), daemon=True)
        bridge.start()
        session.settimeout(WAIT)
        assert session.recv(100) == b""  # the end of the stream, not ECONNRESET
        session.close()
        bridge.join(WAIT)
        assert not bridge.is_alive()
    finally:
        done.set()
        session.close()
        raw.close()
        listener.close()
        server.join(WAIT)


@pytest.mark.fork
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_client_trickling_tls_records_is_read_a_few_times_a_second(
    certificate: tuple[Path, Path],
) -> None:
    """Slowloris over TLS: one byte of a line in each TLS record, each its own segment.
    The TLS worker, like the plain one, reads such a client a few times a second, not
    once a record (it was woken for every one), and the finished line arrives whole."""
    cert, key = certificate
    args = ["0", "--host", "127.0.0.1", "--mode", "fork", "--tls-cert", str(cert)]
    with running_server(*args, "--tls-key", str(key)) as srv:
        bob = tls_peer(srv, cert)
        joined(bob)
        # (A fresh worker bears the fork server's name until it has renamed itself.)
        wait_until(lambda: len(srv.workers()) == 1, "bob's worker")
        before = set(srv.workers())
        trickler = tls_peer(srv, cert)
        trickler.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = joined(trickler)
        assert bob.line() == f"* {name} joined"
        woken = trickle_wakeups(srv, before, trickler, bob, name)
        assert woken < TRICKLED // 4, f"woken {woken} times for {TRICKLED} records"
