"""TLS for the client (`--tls`, `--tls-ca FILE`, `--tls-insecure`): a bridge thread.

The session reads its socket on one thread and writes it on another. An `ssl.SSLSocket`
used that way runs OpenSSL on one connection from two threads at once, which OpenSSL
does not promise to survive (a read that must write, as a TLS 1.3 key update does,
races the writer). So the TLS connection has one owner: a bridge thread that speaks TLS
to the server (`chatbox.tls_stream`, memory BIOs over a non-blocking socket) and plain
bytes to the session over a socketpair. The session keeps its plain blocking socket and
all its rules - its half-close after `/quit` becomes close_notify, the server's end
becomes the end of its stream.

The handshake is done before the bridge starts, so a certificate that does not verify,
or a server that does not speak TLS, is a `ConnectError` in one line, as an unreachable
server is.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from typing import NoReturn

from chatbox.client.session import ConnectError, describe
from chatbox.tls_stream import RECV_SIZE, TlsStream, wait

HANDSHAKE_TIMEOUT = 10.0
# Bytes held by the bridge in either direction before it stops reading that side, so
# backpressure passes through it as through a plain connection.
BRIDGE_LIMIT = 262144


def client_context(ca_file: str | None, insecure: bool) -> ssl.SSLContext:
    """A client context for TLS 1.2 and later: verifying the server's certificate and
    name against ``ca_file`` or the system's store, or (``insecure``) not at all.

    Error handling: an unreadable or unusable ``ca_file`` is a `ConnectError`.
    """
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        try:
            context = ssl.create_default_context(cafile=ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        except FileNotFoundError:
            raise ConnectError(f"cannot read --tls-ca {ca_file}: no such file") from None
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                raise ConnectError(f"--tls-ca {ca_file} holds no PEM certificate") from None
            raise ConnectError(f"cannot read --tls-ca {ca_file}: {describe(exc)}") from None
    return context


def secure(
    sock: socket.socket,
    host: str,
    port: int,
    context: ssl.SSLContext,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> socket.socket:
    """Do the TLS handshake on the connected ``sock``; the session's plain socket.

    Resource handling: from here on the bridge thread owns ``sock`` and closes it when
    either side is done; on error ``sock`` is closed. Error handling: a failed or
    timed-out handshake is a `ConnectError` whose message says why in one line.
    """
    try:
        stream = _handshake(sock, host, port, context, timeout)
        session_end, bridge_end = socket.socketpair()
    except BaseException:
        sock.close()
        raise
    bridge = threading.Thread(
        target=_bridge, args=(stream, bridge_end), name="tls-bridge", daemon=True
    )
    bridge.start()
    return session_end


def _handshake(
    sock: socket.socket, host: str, port: int, context: ssl.SSLContext, timeout: float
) -> TlsStream:
    where = f"cannot connect to {host} port {port}"
    sock.setblocking(False)
    stream = TlsStream(sock, context, server_side=False, server_hostname=host)
    deadline = time.monotonic() + timeout
    try:
        while not stream.handshake():
            stream.flush()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectError(f"{where}: no TLS handshake within {timeout:g} s")
            wait([sock], [sock] if stream.outbox else [], remaining)
            stream.pull()
            if stream.eof:
                stream.handshake()  # OpenSSL's word on the end, if it has one
                said = _plain_words(stream.head)
                if said is not None:
                    raise ConnectError(f"{where}: the server answered without TLS: {said}")
                raise ConnectError(
                    f"{where}: the server closed the connection during the TLS handshake"
                    " (does it speak TLS?)"
                )
        stream.flush()
    except ssl.SSLError as exc:
        said = _plain_words(stream.head)
        if said is None:
            _explain(where, exc)
        raise ConnectError(f"{where}: the server answered without TLS: {said}") from None
    except OSError as exc:
        raise ConnectError(f"{where}: {describe(exc)}") from None
    return stream


def _plain_words(head: bytes) -> str | None:
    """The server's first line, if it answered the handshake with a line of this
    protocol (a refusal such as `! server full`) instead of TLS."""
    line, newline, _ = head.partition(b"\n")
    if not newline or not line.startswith((b"! ", b"* ")):
        return None
    text = line.decode("utf-8", "replace")
    return text if text.isprintable() else None


def _explain(where: str, exc: ssl.SSLError) -> NoReturn:
    """Raise the `ConnectError` that says why the handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or "verification failed"
        raise ConnectError(
            f"{where}: its TLS certificate is not trusted: {why.rstrip('.')} "
            "(--tls-ca FILE names the certificate to trust; --tls-insecure skips the check)"
        ) from None
    reason = str(exc.reason or exc).lower().replace("_", " ")
    raise ConnectError(f"{where}: TLS handshake failed: {reason} (is it a TLS port?)") from None


# Once the server's stream has ended, the session gets this long to close its side.
SESSION_END_TIME = 5.0


def _end_session(server: socket.socket, inner: socket.socket) -> None:
    """The server's stream has ended: end the session's stream (it sees the server's
    close), and read and drop what the session still sends (a `/quit` that crossed the
    server's close) until it closes its side. Closing ``inner`` with that unread would
    reset the session's socket, and the session would report a reset, not the close."""
    with contextlib.suppress(OSError):
        server.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        inner.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + SESSION_END_TIME
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _ = wait([inner], [], remaining)
        if not readable:
            return
        try:
            if not inner.recv(RECV_SIZE):
                return
        except BlockingIOError:
            continue
        except OSError:
            return


def _bridge(stream: TlsStream, inner: socket.socket) -> None:
    """Move bytes between the server (TLS) and the session (plain) until both are done.

    The session half-closing (after /quit) is passed on as close_notify; the server's
    stream ending (however it ends) as the end of the session's stream.
    """
    server = stream.sock
    inner.setblocking(False)
    # What arrived with the end of the handshake is already in TLS, where no poll sees it.
    to_session = bytearray(stream.receive())
    session_open = True  # the session may still send
    try:
        while True:
            if stream.ended and not to_session:
                _end_session(server, inner)
                return
            readers = []
            if not stream.ended and len(to_session) < BRIDGE_LIMIT:
                readers.append(server)
            if session_open and len(stream.outbox) < BRIDGE_LIMIT:
                readers.append(inner)
            writers = []
            if stream.outbox:
                writers.append(server)
            if to_session:
                writers.append(inner)
            readable, writable = wait(readers, writers, None)
            if inner.fileno() in readable:
                try:
                    data = inner.recv(RECV_SIZE)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data:
                    stream.send(data)
                elif data is not None:
                    session_open = False
                    stream.close()
            if server.fileno() in readable:
                to_session += stream.receive()
            if stream.outbox:
                try:
                    stream.flush()
                except OSError:
                    stream.outbox.clear()
                    stream.ended = True
            if to_session and inner.fileno() in writable:
                try:
                    sent = inner.send(to_session)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the session has gone
                del to_session[:sent]
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        inner.close()
