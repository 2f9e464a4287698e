"""`python -m chatbox.server`: the chat server's command line.

Parses arguments, raises the descriptor limit, binds, announces the address on stdout
(the first line, `listening on HOST:PORT`, is what scripts wait for) and hands over to
the hub. Every condition a user can cause - a port in use, a bad address, a bad option -
ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import TYPE_CHECKING

from chatbox import protocol
from chatbox.argtypes import listening_port, non_negative_int, positive_float, positive_int
from chatbox.server import admission, flood
from chatbox.server.cluster import DEFAULT_LEASE, DEFAULT_TIMEOUT
from chatbox.server.farewell import MAX_FAREWELLS
from chatbox.server.gate import PASSWORD_ENV, PasswordError, read_secret
from chatbox.server.history import HISTORY_BYTES, History, HistoryFileError, SqliteStore
from chatbox.server.hub import (
    DEFAULT_HARD_FACTOR,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_SENDQ,
    DEFAULT_SILENT_TIMEOUT,
    DEFAULT_SLOW_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    Hub,
    HubConfig,
)

if TYPE_CHECKING:
    from chatbox.server.cluster import Cluster
from chatbox.server.launcher import MODES, default_mode, make_launcher
from chatbox.server.logs import ServerLog
from chatbox.server.timeouts import DEFAULT_IDLE_TIMEOUT, DEFAULT_LINE_TIMEOUT, InputTimeouts
from chatbox.server.tls import DEFAULT_HANDSHAKE_TIMEOUT, TlsConfig, TlsSetupError, server_context
from chatbox.server.worker import WorkerConfig

DEFAULT_PORT = 4242

# Descriptors the hub needs per client: the client socket and its channel end (plus, in
# thread mode, the worker's channel end, which lives in the same process).
FDS_PER_CLIENT = {"fork": 2, "thread": 3}
# With TLS, the relay socketpair: the hub's end (and in thread mode the worker's too);
# the hub still holds the TCP socket, to close it last.
TLS_FDS_PER_CLIENT = {"fork": 1, "thread": 2}
# stdio, the listener, the selector, wakeup sockets, logging, imports; and the refused
# connections being closed gracefully.
FDS_SPARE = 64 + MAX_FAREWELLS

log = logging.getLogger("chatbox.server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatbox-server",
        description="Relay chat lines between any number of TCP clients "
        "(nc, telnet and chatbox-client all work).",
        epilog="The first line on stdout is 'listening on HOST:PORT'. Protocol: docs/protocol.md.",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=listening_port,
        default=DEFAULT_PORT,
        help=f"TCP port to listen on; 0 picks a free one (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--host",
        default="0.0.0.0",
        help="address to listen on (default 0.0.0.0, all interfaces; 127.0.0.1 for "
        "this machine only; :: for IPv6)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="serve each client in a forked process or a thread "
        f"(default here: {default_mode()}; thread with --cluster, where fork works too)",
    )
    parser.add_argument(
        "--cluster",
        metavar="URL",
        help="share the room with the other servers on this Redis, e.g. "
        "redis://HOST:6379/0 (rediss:// for TLS); needs chatbox[cluster] (docs/cluster.md)",
    )
    parser.add_argument(
        "--cluster-lease",
        type=positive_float,
        default=DEFAULT_LEASE,
        metavar="SECONDS",
        help="how long a node's names outlive it if it dies without a word "
        f"(default {DEFAULT_LEASE})",
    )
    parser.add_argument(
        "--cluster-timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long a node waits for Redis before it tells the client "
        f"'! cluster unavailable' (default {DEFAULT_TIMEOUT}; raise it for a distant Redis)",
    )
    parser.add_argument(
        "--history-file",
        metavar="PATH",
        help="keep the history (/history, /resume) in this SQLite file, so that it "
        "survives restarts (created if absent; not with --cluster, whose history is the "
        "stream)",
    )
    parser.add_argument(
        "--history-lines",
        type=positive_int,
        metavar="N",
        help="keep at most the last N lines of history (default: about the last "
        f"{HISTORY_BYTES >> 20} MiB of lines)",
    )
    parser.add_argument(
        "--max-line",
        type=positive_int,
        default=protocol.DEFAULT_MAX_LINE,
        help=f"longest accepted line in bytes (default {protocol.DEFAULT_MAX_LINE})",
    )
    parser.add_argument(
        "--sendq",
        type=positive_int,
        default=DEFAULT_SENDQ,
        help="bytes queued for one client before its --slow-timeout grace starts "
        f"(default {DEFAULT_SENDQ})",
    )
    parser.add_argument(
        "--sendq-hard",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="bytes queued for one client at most: a client whose queue reaches them is "
        "disconnected as too slow at once; never less than --sendq "
        f"(default {DEFAULT_HARD_FACTOR} x --sendq)",
    )
    parser.add_argument(
        "--slow-timeout",
        type=positive_float,
        default=DEFAULT_SLOW_TIMEOUT,
        help="seconds a client's queue may stay over --sendq before it is disconnected "
        "as too slow; nobody else waits for it meanwhile "
        f"(default {DEFAULT_SLOW_TIMEOUT})",
    )
    parser.add_argument(
        "--stall-timeout",
        type=non_negative_float,
        default=DEFAULT_STALL_TIMEOUT,
        metavar="SECONDS",
        help="seconds a client's queue may wait without moving (all that was queued when "
        "the wait began sent), however small, before it is disconnected as too slow; "
        f"0: never (default {DEFAULT_STALL_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-clients",
        type=positive_int,
        default=DEFAULT_MAX_CLIENTS,
        help=f"clients served at once; one more is told the server is full "
        f"(default {DEFAULT_MAX_CLIENTS})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=non_negative_float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a client that sent nothing for this long (a bare newline counts: "
        f"chatbox-client sends one when idle); 0: never (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--line-timeout",
        type=non_negative_float,
        default=DEFAULT_LINE_TIMEOUT,
        metavar="SECONDS",
        help="close a client that began a line and did not finish it within this long; "
        f"0: never (default {DEFAULT_LINE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--silent-timeout",
        type=non_negative_float,
        default=DEFAULT_SILENT_TIMEOUT,
        metavar="SECONDS",
        help="while the server is at least 90%% full, close connections that have sent "
        "nothing at all (not even a keepalive) for this long since they came, oldest "
        f"first, until it is below; 0: never (default {DEFAULT_SILENT_TIMEOUT:g})",
    )
    add_flood_options(parser)
    add_admission_options(parser)
    add_security_options(parser)
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="what to log on stderr (default warning)",
    )
    return parser


def add_flood_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "flood control", "per client; excess lines are delayed for that client alone"
    )
    group.add_argument(
        "--flood-lines",
        type=non_negative_float,
        default=flood.DEFAULT_LINES,
        help=f"lines a second one client may send on average; 0: no line limit "
        f"(default {flood.DEFAULT_LINES:g})",
    )
    group.add_argument(
        "--flood-bytes",
        type=non_negative_float,
        default=flood.DEFAULT_BYTES,
        help=f"bytes a second one client may send on average; 0: no byte limit "
        f"(default {flood.DEFAULT_BYTES:.0f})",
    )
    group.add_argument(
        "--flood-burst",
        type=positive_float,
        default=flood.DEFAULT_BURST,
        help="seconds' worth of either rate a client may send at once, as a paste "
        f"(default {flood.DEFAULT_BURST:g})",
    )
    group.add_argument(
        "--flood-timeout",
        type=positive_float,
        default=flood.DEFAULT_TIMEOUT,
        help="seconds a client may stay over its rate before it is disconnected "
        f"for flooding (default {flood.DEFAULT_TIMEOUT:g})",
    )


def add_admission_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "who may connect",
        "access lists (deny wins; with any allow, only allowed addresses get in) and "
        "per-address limits; an IPv6 address counts per /64",
    )
    group.add_argument(
        "--allow",
        action="append",
        type=network,
        default=[],
        metavar="CIDR",
        help="admit only addresses in CIDR (an address or a network; repeatable)",
    )
    group.add_argument(
        "--deny",
        action="append",
        type=network,
        default=[],
        metavar="CIDR",
        help="refuse addresses in CIDR, closing at once (repeatable)",
    )
    group.add_argument(
        "--allow-file",
        action="append",
        type=network_file,
        default=[],
        metavar="FILE",
        help="--allow for each line of FILE (one CIDR a line, # comments)",
    )
    group.add_argument(
        "--deny-file",
        action="append",
        type=network_file,
        default=[],
        metavar="FILE",
        help="--deny for each line of FILE",
    )
    group.add_argument(
        "--max-per-ip",
        type=non_negative_int,
        default=admission.DEFAULT_MAX_PER_IP,
        metavar="N",
        help="connections at once from one address; one more is told so; 0: no limit "
        f"(default {admission.DEFAULT_MAX_PER_IP})",
    )
    group.add_argument(
        "--connect-rate",
        type=non_negative_float,
        default=admission.DEFAULT_CONNECT_RATE,
        metavar="N",
        help="new connections a second one address may open on average; 0: no limit "
        f"(default {admission.DEFAULT_CONNECT_RATE:g})",
    )
    group.add_argument(
        "--connect-burst",
        type=positive_float,
        default=admission.DEFAULT_CONNECT_BURST,
        metavar="N",
        help="new connections one address may open at once "
        f"(default {admission.DEFAULT_CONNECT_BURST:g})",
    )
    exempt = ", ".join(str(net) for net in admission.DEFAULT_EXEMPT)
    group.add_argument(
        "--exempt",
        action="append",
        type=exempt_network,
        metavar="CIDR",
        help="addresses the per-address limits do not apply to (repeatable; 'none' for "
        f"no address; default this machine's own: {exempt}); the access lists still do",
    )


def network(text: str) -> admission.Network:
    try:
        return admission.parse_network(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def network_file(path: str) -> list[admission.Network]:
    try:
        return admission.read_networks(path)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def exempt_network(text: str) -> admission.Network | None:
    return None if text.strip().lower() == "none" else network(text)


def admission_rules(args: argparse.Namespace) -> admission.AdmissionRules:
    exempt = admission.DEFAULT_EXEMPT
    if args.exempt is not None:
        exempt = tuple(net for net in args.exempt if net is not None)
    return admission.AdmissionRules(
        allow=(*args.allow, *(net for listing in args.allow_file for net in listing)),
        deny=(*args.deny, *(net for listing in args.deny_file for net in listing)),
        exempt=exempt,
        max_per_ip=args.max_per_ip,
        connect_rate=args.connect_rate,
        connect_burst=args.connect_burst,
    )


def add_security_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS and password")
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS (1.2 or later) with this certificate chain (PEM); needs --tls-key",
    )
    group.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    group.add_argument(
        "--tls-handshake-timeout",
        type=positive_float,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="a client that has not completed its TLS handshake by then is closed "
        f"(default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    group.add_argument(
        "--password-file",
        metavar="FILE",
        help="clients must send '/pass PASSWORD' first; the password is the file's first "
        f"line (without this, the {PASSWORD_ENV} environment variable, if set)",
    )


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """What every worker needs, from the options: TLS context, password.

    Error handling: unusable TLS files or password are a `TlsSetupError` or
    `PasswordError` whose message is one line.
    """
    if (args.tls_cert is None) != (args.tls_key is None):
        raise TlsSetupError("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert is not None:
        tls = TlsConfig(server_context(args.tls_cert, args.tls_key), args.tls_handshake_timeout)
    return WorkerConfig(
        args.max_line,
        InputTimeouts(args.idle_timeout, args.line_timeout),
        tls,
        read_secret(args.password_file),
    )


def non_negative_float(text: str) -> float:
    value = float(text) if text.replace(".", "", 1).isdigit() else -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``needed``; return what we now have.

    Error handling: where the hard limit is lower, the soft one is raised to it and the
    caller decides what to say; on platforms without `resource` nothing is done.
    """
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6, by what ``host`` resolves to)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    try:
        # A restarted server must be able to take its port back while old connections
        # linger in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(socket.SOMAXCONN)
    except BaseException:
        listener.close()
        raise
    return listener


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode is None:
        # Thread mode by default in a cluster, as before fork mode was allowed there.
        args.mode = "thread" if args.cluster else default_mode()
    try:
        workers = worker_config(args)
    except (TlsSetupError, PasswordError) as exc:
        print(f"chatbox-server: {exc}", file=sys.stderr)
        return 2
    if args.cluster and args.history_file:
        print(
            "chatbox-server: --history-file is for a single server "
            "(with --cluster the history is the cluster's stream)",
            file=sys.stderr,
        )
        return 2
    try:
        history, store = open_history(args.history_file, args.history_lines)
    except HistoryFileError as exc:
        print(f"chatbox-server: {exc}", file=sys.stderr)
        return 1
    cluster = None
    if args.cluster:
        cluster = connect_cluster(args.cluster, args.cluster_lease, args.cluster_timeout)
        if cluster is None:
            return 1
    per_client = FDS_PER_CLIENT[args.mode]
    if workers.tls is not None:
        per_client += TLS_FDS_PER_CLIENT[args.mode]
    needed = args.max_clients * per_client + FDS_SPARE
    have = raise_fd_limit(needed)
    max_clients = args.max_clients
    if have < needed:
        max_clients = max(1, (have - FDS_SPARE) // per_client)
        print(
            f"chatbox-server: the descriptor limit (RLIMIT_NOFILE {have}) allows only "
            f"{max_clients} of --max-clients {args.max_clients}; raise it with 'ulimit -n'",
            file=sys.stderr,
        )
    try:
        listener = bind(args.host, args.port)
    except socket.gaierror as exc:
        print(f"chatbox-server: cannot use address {args.host!r}: {exc.strerror}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"chatbox-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    # Before the launcher: in fork mode it makes the fork server now, and the fork
    # server's workers log at the level set at that moment.
    logging.getLogger().setLevel(args.log_level.upper())
    # Before the announcement: a server that says it listens can start workers.
    tls_files = (args.tls_cert, args.tls_key) if workers.tls is not None else None
    launcher = make_launcher(args.mode, workers, tls_files)
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    config = HubConfig(
        tls=workers.tls is not None,
        tls_context=workers.tls.context if workers.tls is not None else None,
        password=workers.password is not None,
        max_line=args.max_line,
        sendq=args.sendq,
        sendq_hard=args.sendq_hard,
        max_clients=max_clients,
        slow_timeout=args.slow_timeout,
        stall_timeout=args.stall_timeout,
        silent_timeout=args.silent_timeout,
        flood=flood.FloodLimits(
            args.flood_lines, args.flood_bytes, args.flood_burst, args.flood_timeout
        ),
        admission=admission_rules(args),
        history=history,
    )
    server_log = ServerLog(args.log_level)
    server_log.start()
    if store is not None:
        store.start()
    try:
        hub = Hub(listener, launcher, config, cluster)
        if cluster is not None:
            cluster.start(hub.wake)
        try:
            hub.serve_forever()
        finally:
            if cluster is not None:
                cluster.stop()
    finally:
        if store is not None:
            store.stop()  # what the last turns added is written before the server ends
        server_log.stop()
    return 0


def open_history(path: str | None, lines: int | None) -> tuple[History, SqliteStore | None]:
    """The single server's history, on disk if ``path`` is given.

    Error handling: a file that cannot be opened, read or written raises
    `HistoryFileError` in one line naming it."""
    store = SqliteStore(path) if path is not None else None
    try:
        return History(HISTORY_BYTES, lines, store), store
    except HistoryFileError:
        if store is not None:
            store.stop()
        raise


def connect_cluster(url: str, lease: float, timeout: float) -> Cluster | None:
    """The node's link to Redis, checked; None (having said why in one line) if unusable."""
    from chatbox.server.cluster import Cluster, Unavailable

    try:
        cluster = Cluster(url, lease, timeout)
    except ValueError as exc:  # redis-py's word for a URL it cannot read
        print(f"chatbox-server: bad --cluster URL {url!r}: {exc}", file=sys.stderr)
        return None
    try:
        cluster.connect()
    except Unavailable as exc:
        print(f"chatbox-server: cannot reach the cluster at {url}: {exc}", file=sys.stderr)
        return None
    return cluster


if __name__ == "__main__":
    sys.exit(main())
