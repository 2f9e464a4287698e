"""TLS on the server (`--tls-cert`, `--tls-key`): terminated in the worker.

The hub writes every client's output itself, to the client's socket, without blocking;
with TLS those bytes must be encrypted first, and a TLS connection cannot be written by
one process (the hub) and read by another (a forked worker). So the worker owns the TLS
connection, and the hub is given, in place of the client's socket, its end of one more
socketpair (the relay): the hub writes plaintext to it exactly as to a plain client,
and the worker encrypts what comes out of the other end and sends it to the client.
Backpressure is unchanged: a client that does not read fills the worker's outbox, the
worker stops reading the relay, the relay fills, and the hub's queue for that client
grows as it would for a plain one.

The handshake is the worker's first job, bounded by ``handshake_timeout``: a client
that speaks plain text to the TLS port is told so in plain text and closed, one that
says nothing is closed when the time is up, and neither ever holds a worker for longer
or reaches the room. Only once the handshake (and the password gate, if any) is passed
does the worker send the hub its ready note, and the client enter the room.

Without TLS none of this runs: the plain path has no relay and no extra hop.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatbox import protocol
from chatbox.server.channel import encode_event, end_note, heard_note, ready_note, refused_note
from chatbox.server.gate import LOGIN_TIMEOUT, Login
from chatbox.server.timeouts import InputClock, Trickle
from chatbox.server.worker import release_client
from chatbox.tls_stream import RECV_SIZE, TlsStream, wait

if TYPE_CHECKING:
    from chatbox.server.worker import WorkerConfig

log = logging.getLogger("chatbox.tls")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# The first byte of every TLS connection: a handshake record. Anything else is a client
# speaking another protocol (a person with nc, a plain chatbox-client).
TLS_HANDSHAKE_RECORD = 0x16
# Once the hub is done with a client, the worker still sends what the hub wrote last
# (`! wrong password`, `* server shutting down`) for up to this long, then gives up on
# a client that does not read. Below the hub's 1.5 s shutdown grace.
DRAIN_TIME = 1.0
# TLS bytes waiting for the client beyond which the worker stops taking the hub's
# output from the relay (so the relay, then the hub's queue, hold the rest).
OUTBOX_LIMIT = 65536


class TlsSetupError(Exception):
    """The certificate or key cannot be used; the message is one line."""


@dataclass(frozen=True)
class TlsConfig:
    """What a TLS worker needs: the server's context and how long a handshake may take."""

    context: ssl.SSLContext
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for TLS 1.2 and later with this certificate chain and key.

    Error handling: a missing, unreadable or malformed file, or a key that does not
    match the certificate, is a `TlsSetupError` naming the files.
    """
    for path in (cert, key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsSetupError(f"cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would let a client make the worker's reads want writes and back.
    context.options |= ssl.OP_NO_RENEGOTIATION

    def no_passphrase() -> str:
        # OpenSSL would otherwise ask for it on the terminal, and a server must not wait.
        raise TlsSetupError(f"{key} is encrypted with a passphrase; give an unencrypted key")

    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise TlsSetupError(_why_unusable(cert, key, exc)) from None
    except OSError as exc:
        raise TlsSetupError(f"cannot read {cert} or {key}: {exc.strerror or exc}") from None
    return context


def _why_unusable(cert: str, key: str, exc: ssl.SSLError) -> str:
    """OpenSSL's complaint about a certificate and key, as a line that names the file."""
    try:
        # A context that only reads the certificate tells which of the two is wrong.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cert)
    except ssl.SSLError:
        return f"{cert} holds no PEM certificate"
    reason = str(exc.reason or exc).lower().replace("_", " ")
    if "mismatch" in reason:
        return f"the key {key} does not belong to the certificate {cert}"
    detail = "" if "pem lib" in reason else f" ({reason})"
    return f"{key} holds no usable PEM private key for {cert}{detail}"


def serve_tls(
    client: socket.socket,
    relay: socket.socket,
    channel: socket.socket,
    config: WorkerConfig,
    tls: TlsConfig,
) -> None:
    """Serve one TLS client: handshake, gate, then its lines up the channel and the
    hub's output (from ``relay``) down to it, until the hub is done with it.

    Resource handling: on return the client socket is shut down (never closed: the hub
    holds it and closes it once this worker's channel end is closed), ``relay`` and
    ``channel`` are closed. Error handling: nothing the client does raises out of here.
    """
    for sock in (client, relay, channel):
        sock.setblocking(False)
    stream = TlsStream(client, tls.context, server_side=True)
    try:
        if _handshake(stream, channel, tls.handshake_timeout):
            _relay(stream, relay, channel, config)
    except OSError as exc:
        # The channel or the relay failed: the hub went away (server ending abruptly).
        log.debug("TLS worker failed: %s", exc)
    finally:
        release_client(client, relay, channel)


def _handshake(stream: TlsStream, channel: socket.socket, timeout: float) -> bool:
    """Whether the client completed a handshake within ``timeout`` (else it is done)."""
    client = stream.sock
    deadline = time.monotonic() + timeout
    looked = False  # at the first byte, to tell a plain-text client
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.info("TLS handshake timed out after %g s", timeout)
            return False
        readable, writable = wait([client, channel], [client] if stream.outbox else [], remaining)
        if channel.fileno() in readable:
            return False  # the hub is done with it (shutting down)
        if client.fileno() in writable:
            stream.flush()
        if client.fileno() not in readable:
            continue
        if not looked:
            try:
                first = client.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            except OSError:
                return False
            if not first:
                return False
            looked = True
            if first[0] != TLS_HANDSHAKE_RECORD:
                log.info("a client spoke plain text to the TLS port")
                _turn_away(client, protocol.TLS_REQUIRED)
                return False
        stream.pull()
        try:
            if stream.handshake():
                stream.flush()
                return True
        except ssl.SSLError as exc:
            log.info("TLS handshake failed: %s", exc.reason or exc)
            _send_best_effort(stream)
            return False
        if stream.eof:
            return False
        stream.flush()


def _turn_away(client: socket.socket, line: bytes) -> None:
    """Tell a plain-text client ``line`` and close so that it arrives: what it sent is
    read first and our side shut (FIN), or the close would reset the connection and
    make its kernel drop the line (as `chatbox.server.farewell` does in the hub)."""
    deadline = time.monotonic() + DRAIN_TIME
    try:
        client.send(line)
        client.shutdown(socket.SHUT_WR)
    except OSError:
        return
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _ = wait([client], [], remaining)
        if not readable:
            return
        try:
            if not client.recv(RECV_SIZE):
                return
        except BlockingIOError:
            continue
        except OSError:
            return


def _send_best_effort(stream: TlsStream) -> None:
    try:
        stream.flush()
    except OSError:
        pass


def _relay(
    stream: TlsStream, relay: socket.socket, channel: socket.socket, config: WorkerConfig
) -> None:
    """After the handshake: the gate, then both directions until the hub is done."""
    client = stream.sock
    decoder = protocol.LineDecoder(config.max_line)
    upward = bytearray()  # for the hub, waiting for room in the channel
    login = Login(config.password) if config.password is not None else None
    login_deadline = time.monotonic() + LOGIN_TIMEOUT
    if login is None:
        upward += ready_note()
    else:
        stream.send(protocol.PASSWORD_REQUIRED)
    reading = True  # the client may still send
    relay_open = True  # the hub may still write output for the client
    channel_open = True  # the hub has not shut its direction of the channel yet
    # What arrived with the end of the handshake (a client's first line often travels
    # with its last handshake message) is already in TLS, where no poll can see it.
    buffered = True
    closing_by: float | None = None  # the hub is done: drain until then
    # The input timeouts, restarted once the gate is passed. Once the client timed out
    # (reported to the hub), what it sends is thrown away until the hub ends it.
    clock = InputClock(config.timeouts, time.monotonic())
    trickle = Trickle()  # a client that trickles is read a few times a second
    while True:
        if closing_by is not None and not relay_open and not stream.outbox:
            break
        now = time.monotonic()
        timeout = None
        if closing_by is not None:
            timeout = closing_by - now
            if timeout <= 0:
                log.debug("a TLS client did not take its last output in time")
                return
        elif login is not None and reading:
            timeout = login_deadline - now
            if timeout <= 0:
                stream.send(protocol.PASSWORD_TIMEOUT)
                upward += end_note(False)
                reading = False
                timeout = None
        elif reading:
            timeout, timed_out = clock.turn(now, held=bool(upward))
            upward += timed_out
        # A channel at its end stays readable: polling it then would spin.
        readers = [channel] if channel_open else []
        client_wanted = reading and not upward and closing_by is None
        # (Not once timed out: see the plain worker.)
        pause = trickle.pause(now) if client_wanted and not buffered and not clock.expired else 0.0
        if pause:
            client_wanted = False
            timeout = pause if timeout is None else min(timeout, pause)
        if client_wanted:
            readers.append(client)
            if buffered:
                timeout = 0.0
        if relay_open and len(stream.outbox) < OUTBOX_LIMIT:
            readers.append(relay)
        writers = [client] if stream.outbox else []
        if upward:
            writers.append(channel)
        readable, writable = wait(readers, writers, timeout)
        if channel_open and channel.fileno() in readable:
            try:
                if channel.recv(1) == b"":
                    channel_open = False
                    if closing_by is None:
                        closing_by = time.monotonic() + DRAIN_TIME
            except BlockingIOError:
                pass
        if relay.fileno() in readable:
            try:
                data = relay.recv(RECV_SIZE)
            except BlockingIOError:
                data = None
            if data:
                stream.send(data)
            elif data is not None:
                relay_open = False
                if closing_by is None:
                    closing_by = time.monotonic() + DRAIN_TIME
        if client_wanted and (buffered or client.fileno() in readable):
            buffered = False
            plain = stream.receive()
            if clock.expired:
                plain = b""  # thrown away
            events = decoder.feed(plain) if plain else []
            # Part of a record or of a line, a few bytes at a time: a trickle.
            begun = decoder.holding or stream.partial
            trickle.read(stream.took, bool(events), begun, time.monotonic())
            if login is not None and events:
                verdict, events = login.feed(events)
                if verdict is not None:
                    login = None
                    if verdict:
                        upward += ready_note()
                        clock = InputClock(config.timeouts, time.monotonic())
                        # It sent its password: it is heard (and a line begun after
                        # has its clock running).
                        clock.heard(time.monotonic(), False, decoder.holding)
                        upward += heard_note()
                    else:
                        upward += refused_note()
                        reading = False
                        events = []
            elif (
                plain
                and login is None
                and clock.heard(time.monotonic(), bool(events), decoder.holding)
            ):
                upward += heard_note()
            for event in events:
                upward += encode_event(event)
            if stream.ended and reading:
                reading = False
                if not clock.expired:
                    upward += end_note(stream.reset)
        if stream.outbox:
            try:
                stream.flush()
            except OSError:
                stream.outbox.clear()  # the client is gone: nothing can reach it
        if upward and channel.fileno() in writable:
            try:
                sent = channel.send(upward)
            except BlockingIOError:
                sent = 0
            del upward[:sent]
    stream.close()
    _send_best_effort(stream)
