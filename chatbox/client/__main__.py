"""`python -m chatbox.client PORT [IP]`: the chat client's command line.

Parses and checks the arguments (a bad one is argparse's one-line usage error, exit 2),
connects, opens the console this process needs - readline at a terminal, plain lines
through pipes - and runs the `Session`, whose result is the exit status. A server that
cannot be reached is one line on stderr and exit 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from chatbox import protocol
from chatbox.argtypes import non_negative_float, positive_float
from chatbox.client.consoles import open_console
from chatbox.client.login import PASSWORD_ENV, LoginError, log_in, read_password
from chatbox.client.reconnect import Address, Reconnector, parse_address
from chatbox.client.session import (
    KEEPALIVE_INTERVAL,
    QUIT_TIMEOUT,
    ConnectError,
    Session,
    connect,
    describe,
)

PROG = "chatbox-client"
DEFAULT_HOST = "127.0.0.1"

# The commands are the protocol's own list, so --help and the server's /help agree.
_COMMAND_TABLE = "".join(f"  {usage:<17} {what}\n" for usage, what in protocol.COMMAND_HELP)
COMMANDS_HELP = f"""\
commands (type them at the prompt; anything else is said to everyone):
{_COMMAND_TABLE}
A name is 1-{protocol.MAX_NAME} letters, digits or _-.[]{{}}|, starting with a letter. Ctrl-D,
Ctrl-C and SIGTERM leave the chat as /quit does.

On a terminal you get line editing and history; received lines appear above what you
are typing. Through pipes the client reads and writes plain lines, so it can be scripted:
  seq 1 3 | chatbox-client 5000 chat.example.org

exit status: 0 after you quit, 1 if the connection failed or the server closed it,
2 for a usage error. Colour is off when NO_COLOR is set or output is not a terminal.
"""


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    port: int
    host: str
    name: str | None
    timestamps: bool
    quit_timeout: float = QUIT_TIMEOUT
    keepalive: float = KEEPALIVE_INTERVAL
    tls: bool = False
    tls_ca: str | None = None
    tls_insecure: bool = False
    password_file: str | None = None
    resume: bool = False
    fallbacks: tuple[Address, ...] = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Chat with everyone connected to a chatbox server (full duplex).",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("port", metavar="PORT", help="the server's TCP port (1-65535)")
    parser.add_argument(
        "host",
        metavar="IP",
        nargs="?",
        default=DEFAULT_HOST,
        help=f"the server's address: IPv4, IPv6 or a host name (default {DEFAULT_HOST})",
    )
    parser.add_argument("--name", metavar="NAME", help="your name, set with /nick on connect")
    parser.add_argument(
        "--timestamps", action="store_true", help="show the local time of each received line"
    )
    parser.add_argument(
        "--quit-timeout",
        type=positive_float,
        default=QUIT_TIMEOUT,
        metavar="SECONDS",
        help="after /quit, how long to wait for the server to close the connection "
        f"(default {QUIT_TIMEOUT:g}; exit 1 if it does not)",
    )
    parser.add_argument(
        "--keepalive",
        type=non_negative_float,
        default=KEEPALIVE_INTERVAL,
        metavar="SECONDS",
        help="after this long without sending, send a bare newline so the server knows "
        f"you are still there; 0: never (default {KEEPALIVE_INTERVAL:g})",
    )
    going_on = parser.add_argument_group("when the server goes away")
    going_on.add_argument(
        "--resume",
        action="store_true",
        help="if the connection ends without your /quit, connect again and get what was "
        "said meanwhile (as [history] lines, nothing twice); with --fallback, on the next "
        "server",
    )
    going_on.add_argument(
        "--fallback",
        metavar="IP:PORT",
        action="append",
        default=[],
        help="another server of the same room (a cluster node) to go on with if this one "
        "dies; repeat for more, tried in turn; implies --resume",
    )
    security = parser.add_argument_group("TLS and password")
    security.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, verifying the server's certificate and name against the "
        "system's trusted certificates",
    )
    security.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="trust the certificates in FILE (PEM) instead of the system's; implies --tls",
    )
    security.add_argument(
        "--tls-insecure",
        action="store_true",
        help="TLS without checking the server's certificate (anyone in between can read "
        "and change everything); implies --tls",
    )
    security.add_argument(
        "--password-file",
        metavar="FILE",
        help="answer the server's password prompt with the first line of FILE "
        f"(without this, the {PASSWORD_ENV} environment variable, if set)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """The options in ARGV. Error handling: usage errors print usage and exit 2 (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    port = _port(args.port)
    if port is None:
        hint = " (the port comes first: PORT [IP])" if ":" in args.port or "." in args.port else ""
        parser.error(f"invalid port {args.port!r}: expected a number from 1 to 65535{hint}")
    host = args.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1], as in URLs
    if not host:
        parser.error("empty server address")
    name = args.name
    if name is not None and (not name or any(c.isspace() or not c.isprintable() for c in name)):
        # A space or newline would turn `/nick NAME` into something else on the wire.
        parser.error(f"invalid name {name!r}: a name is one word")
    if args.tls_ca is not None and args.tls_insecure:
        parser.error("--tls-ca and --tls-insecure contradict each other")
    fallbacks = []
    for text in args.fallback:
        address = parse_address(text)
        if address is None:
            parser.error(f"invalid --fallback {text!r}: expected IP:PORT ([IPv6]:PORT)")
        fallbacks.append(address)
    return Options(
        port=port,
        host=host,
        name=name,
        timestamps=args.timestamps,
        quit_timeout=args.quit_timeout,
        keepalive=args.keepalive,
        tls=args.tls or args.tls_ca is not None or args.tls_insecure,
        tls_ca=args.tls_ca,
        tls_insecure=args.tls_insecure,
        password_file=args.password_file,
        resume=args.resume or bool(fallbacks),
        fallbacks=tuple(fallbacks),
    )


def _port(text: str) -> int | None:
    if not text.isdigit():
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def main(argv: Sequence[str] | None = None) -> int:
    """`chatbox-client PORT [IP]`: the process's exit status (0 quit, 1 failed, 2 usage)."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        password = read_password(options.password_file, os.environ)
        sock = open_connection(options)
    except (ConnectError, LoginError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        received = log_in(sock, password) if password is not None else b""
        console = open_console(timestamps=options.timestamps, environ=os.environ)
    except (ConnectError, LoginError) as exc:
        sock.close()
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        sock.close()
        print(f"connection lost: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        sock.close()
        return 130
    # `kill` ends the session the way Ctrl-C does: a clean /quit, and a terminal left sane.
    signal.signal(signal.SIGTERM, _interrupt)
    reconnector = None
    if options.resume:

        def reopen(address: Address) -> tuple[socket.socket, bytes]:
            sock = open_connection(options, address)
            try:
                return sock, log_in(sock, password) if password is not None else b""
            except BaseException:
                sock.close()
                raise

        servers = [Address(options.host, options.port), *options.fallbacks]
        reconnector = Reconnector(servers, reopen, (ConnectError, LoginError))
    session = Session(
        sock, console, options.name, options.quit_timeout, options.keepalive, received, reconnector
    )
    return session.run()


def open_connection(options: Options, address: Address | None = None) -> socket.socket:
    """The connected socket the session speaks plain lines on (TLS bridged, if asked).

    Error handling: anything that keeps the connection from being made, its TLS
    handshake included, is a `ConnectError` in one line.
    """
    host, port = (options.host, options.port) if address is None else (address.host, address.port)
    context = None
    if options.tls:
        from chatbox.client.tls import client_context

        context = client_context(options.tls_ca, options.tls_insecure)
    sock = connect(host, port)
    if context is None:
        return sock
    from chatbox.client.tls import secure

    return secure(sock, host, port, context)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
