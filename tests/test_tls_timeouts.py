"""The input timeouts over TLS: `--idle-timeout` and `--line-timeout` hold for a client
that completed its handshake as they do for a plain one, and the notice that ends it
arrives inside TLS.

Certificates are made per test with openssl (tests/tls_certs.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from live_server import (
    Peer,
    ServerProcess,
    check_slowloris_cut,
    running_server,
    silence_until_closed,
)
from tls_certs import tls_peer


@contextmanager
def tls_server(mode: str, certificate: tuple[Path, Path], *args: str) -> Iterator[ServerProcess]:
    cert, key = certificate
    argv = ["0", "--host", "127.0.0.1", "--mode", mode, "--tls-cert", str(cert)]
    with running_server(*argv, "--tls-key", str(key), *args) as srv:
        yield srv


def joined_tls_peers(server: ServerProcess, ca: Path, count: int) -> list[Peer]:
    """``count`` TLS peers, each having read its welcome and everyone's later joins."""
    peers: list[Peer] = []
    for _ in range(count):
        peer = tls_peer(server, ca)
        assert peer.line().startswith("* welcome ")
        for earlier in peers:
            earlier.expect("* ")
        peers.append(peer)
    return peers


def test_an_idle_tls_client_is_told_inside_tls_and_closed(
    mode: str, certificate: tuple[Path, Path]
) -> None:
    with tls_server(mode, certificate, "--idle-timeout", "2") as srv:
        quiet, talker = joined_tls_peers(srv, certificate[0], 2)
        assert silence_until_closed(quiet, [talker]) == ["! disconnected: idle"]
        assert talker.line() == "* guest1 left (idle)"
        talker.send(b"/who\n")
        assert talker.line() == "* here (1): guest2"


def test_a_tls_line_that_is_never_finished_is_timed_out(
    mode: str, certificate: tuple[Path, Path]
) -> None:
    """Slowloris over TLS: a byte every 100 ms, never a newline, from 5 connections."""
    args = ("--line-timeout", "1", "--idle-timeout", "0")
    with tls_server(mode, certificate, *args) as srv:
        (witness,) = joined_tls_peers(srv, certificate[0], 1)
        loris = [tls_peer(srv, certificate[0]) for _ in range(5)]
        for peer in loris:
            peer.expect("* welcome")
        check_slowloris_cut(witness, loris)


def test_a_tls_line_sent_in_pieces_within_the_line_timeout_goes_through(
    certificate: tuple[Path, Path],
) -> None:
    with tls_server("thread", certificate, "--line-timeout", "30") as srv:
        alice, bob = joined_tls_peers(srv, certificate[0], 2)
        for piece in (b"one ", b"line ", b"in pieces\n"):
            alice.send(piece)
        assert bob.line() == "<guest1> one line in pieces"


def test_a_nearly_full_tls_server_closes_its_silent_connection_inside_tls(
    mode: str, certificate: tuple[Path, Path]
) -> None:
    """A keepalive over TLS counts as having sent something; silence does not."""
    args = ("--max-clients", "3", "--silent-timeout", "3")
    with tls_server(mode, certificate, *args) as srv:
        keeper, silent, talker = joined_tls_peers(srv, certificate[0], 3)
        keeper.send(b"\n")
        talker.send(b"\n")
        assert silent.read_to_eof()[-1:] == ["! disconnected: idle"]
        assert talker.line() == "* guest2 left (idle)"
        keeper.send(b"still here\n")
        assert talker.line() == "<guest1> still here"
