"""`python -m harness.run` (also `chatbox-harness`): run a scenario against a chat box.

The runner parses options, lets a `harness.session.Run` open the network and start the
target, lets the scenario drive its parties, has the run end every process, runs the
checks and writes the reports. Every default lives in `harness.scenarios.base.Options`
(and the command templates in `harness.target`); the parser reads them from there.

Exit codes: 0 every check passed in every run; 1 a check failed (in any run of
``--repeat``); 2 a usage or setup error (bad option, server that does not start - its
stderr is shown - or a client command that cannot run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from harness.argtypes import port, positive_float, positive_int, readiness
from harness.bytecode import remove_cache
from harness.checks import check_no_reset, run_checks
from harness.daemon import Readiness
from harness.hosts import NETWORK_KINDS, NetworkOptions
from harness.party import PartyError
from harness.report import (
    Progress,
    RunResult,
    html_report,
    summary,
    to_json,
    to_junit,
    write,
    write_artifacts,
)
from harness.scenarios import SCENARIOS, Options, Scenario
from harness.scenarios.base import (
    DELIVERY_SECONDS,
    PARTY_SECONDS,
    SYNC_LINES,
    default_timeout,
)
from harness.secure import Secure
from harness.session import Run
from harness.target import DEFAULT_CLIENT, DEFAULT_SERVER, SetupError, is_ours
from harness.transcript import RunRecord

EXIT_PASS, EXIT_FAIL, EXIT_SETUP = 0, 1, 2


def network_options(args: argparse.Namespace, clients: int) -> NetworkOptions:
    """The ``--hosts`` family of options, as `harness.hosts.open_network` takes them."""
    return NetworkOptions(
        node_hosts=max(1, args.cluster),
        store_host=args.cluster > 0,
        node_destinations=list(args.node_host),
        kind=args.hosts,
        clients=clients,
        server_host=args.server_host,
        client_hosts=list(args.client_host),
        subnet=args.subnet,
        ssh_options=list(args.ssh_option),
        ssh_port=args.ssh_port,
        ssh_identity=args.ssh_identity,
        ssh_python=args.ssh_python,
        server_address=args.server_address,
    )


DEFAULTS = Options()  # the one place every default of a run is held


def build_parser() -> argparse.ArgumentParser:
    kinds = sorted(NETWORK_KINDS)
    parser = argparse.ArgumentParser(
        prog="chatbox-harness",
        description="Start a real chat server and real clients, script a conversation, and "
        "check that every line arrives whole, once, in order, in full duplex.",
        epilog="Exit codes: 0 all checks pass, 1 a check failed, 2 usage or setup error. "
        "Templates take {port} and {host} (and {python}; {server_options}: what a scenario "
        "asks of this project's server, e.g. slow-reader's small --sendq). Docs: "
        "docs/harness.md.",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--scenario", default="duplex", metavar="NAME", help="what to run (default duplex; --list)"
    )
    parser.add_argument(
        "--clients",
        type=positive_int,
        default=DEFAULTS.clients,
        metavar="N",
        help="parties for broadcast; joiners+2 for churn (default %(default)s)",
    )
    parser.add_argument(
        "--messages",
        type=positive_int,
        default=DEFAULTS.messages,
        metavar="M",
        help="lines each talking party sends (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, metavar="S", help="payload seed (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="bound on one run; passing it fails 'bounded time' (default "
        f"{DEFAULTS.timeout:g}, or more with many parties: {PARTY_SECONDS:g} s a party "
        f"and {DELIVERY_SECONDS * 1e6:g} us a delivery, clients x clients x "
        f"(messages + {SYNC_LINES}))",
    )
    parser.add_argument(
        "--settle",
        type=positive_float,
        default=DEFAULTS.settle,
        metavar="SECONDS",
        help="once all sending is done, how long nothing may arrive before the missing "
        "lines count as lost (default %(default)g)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N times; any run failing fails, a mix is reported as FLAKY",
    )
    parser.add_argument("--script", metavar="FILE", help="conversation script (default: sample)")
    parser.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="LINE",
        help="a line each party sends before it chats, e.g. a nickname or '/pass x' "
        "(repeatable; {name} is the party's name); never counted as a chat line",
    )
    parser.add_argument(
        "--echo",
        action="store_true",
        help="the server echoes each line to its sender by design ('no echo' is n/a)",
    )
    parser.add_argument(
        "--max-line",
        type=positive_int,
        default=0,
        metavar="BYTES",
        help="the server's line limit: the longest lines sent stay below it (default 4096 "
        "for this project's server, 3500 for others)",
    )
    parser.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER,
        metavar="TEMPLATE",
        help=f"server command (default {DEFAULT_SERVER!r})",
    )
    parser.add_argument(
        "--client-cmd",
        default=DEFAULT_CLIENT,
        metavar="TEMPLATE",
        help=f"client command, run in a pty (default {DEFAULT_CLIENT!r})",
    )
    parser.add_argument(
        "--ready",
        type=readiness,
        default=Readiness(),
        metavar="HOW",
        help="when the server is ready: line (its 'listening on HOST:PORT'), port (it "
        "accepts a connection), delay:SECONDS, or auto (default: the line; a port probe "
        "only if it prints nothing on stdout for 2 s)",
    )
    cluster = parser.add_argument_group("a cluster under test (docs/cluster.md)")
    cluster.add_argument(
        "--cluster",
        type=positive_int,
        default=DEFAULTS.cluster_nodes,
        metavar="N",
        help="start a redis-server and N servers sharing one room through it (each with "
        "--cluster URL), on hosts of their own with --hosts netns; parties are spread "
        "over the servers round-robin",
    )
    cluster.add_argument(
        "--cluster-lease",
        type=positive_float,
        default=DEFAULTS.cluster_lease,
        metavar="SECONDS",
        help="the nodes' --cluster-lease: a killed node's clients leave within about it "
        "(default %(default)g)",
    )
    cluster.add_argument(
        "--node-host",
        action="append",
        default=[],
        metavar="USER@HOST",
        help="ssh: a machine for the cluster's nodes after the first, which runs on "
        "--server-host with the redis-server (repeatable; nodes spread round-robin)",
    )
    secure = parser.add_argument_group(
        "TLS and password",
        "this project's server is started with them ({server_options}); every client is "
        "given --tls-ca and --password-file ({client_options} in the client template)",
    )
    secure.add_argument("--tls-cert", metavar="FILE", help="the server's TLS certificate (PEM)")
    secure.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    secure.add_argument(
        "--tls-ca", metavar="FILE", help="what clients trust (default: the --tls-cert file)"
    )
    secure.add_argument(
        "--tls-insecure",
        action="store_true",
        help="clients take any certificate (for addresses the certificate does not name)",
    )
    secure.add_argument(
        "--password-file", metavar="FILE", help="the server's password (first line of FILE)"
    )
    hosts = parser.add_argument_group("where processes run")
    hosts.add_argument(
        "--hosts", choices=kinds, default="loopback", help="host kind (default loopback)"
    )
    hosts.add_argument("--server-host", metavar="USER@HOST", help="ssh: the server's machine")
    hosts.add_argument(
        "--client-host",
        action="append",
        default=[],
        metavar="USER@HOST",
        help="ssh: a client machine (repeatable; parties spread round-robin)",
    )
    hosts.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="OPT",
        help="ssh: extra -o option (repeatable)",
    )
    hosts.add_argument(
        "--ssh-port", type=port, metavar="PORT", help="ssh: port of every host's sshd (ssh -p)"
    )
    hosts.add_argument(
        "--ssh-identity",
        metavar="FILE",
        help="ssh: private key to log in with (ssh -i, and only that key: IdentitiesOnly)",
    )
    hosts.add_argument(
        "--ssh-python",
        default="python3",
        metavar="PATH",
        help="ssh: the Python on the far hosts, which must import chatbox and harness "
        "(default python3)",
    )
    hosts.add_argument(
        "--server-address",
        metavar="ADDR",
        help="ssh: the address clients connect to the server at (default: the address the "
        "server host's sshd saw our login arrive at)",
    )
    hosts.add_argument(
        "--subnet", default="198.18.0.0/24", help="netns: test network (default 198.18.0.0/24)"
    )
    hosts.add_argument(
        "--impair",
        metavar="SPEC",
        help="put the impairment proxy in front of the server, e.g. delay=50ms,slice=1",
    )
    out = parser.add_argument_group("reports")
    out.add_argument("--json", metavar="FILE", help="write the results as JSON")
    out.add_argument("--junit", metavar="FILE", help="write JUnit XML (for CI systems)")
    out.add_argument(
        "--artifacts",
        metavar="DIR",
        help="write transcripts, a sequence diagram, a timeline and index.html per run",
    )
    out.add_argument(
        "--html", metavar="FILE", help="write one self-contained HTML report of every run"
    )
    out.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def list_scenarios() -> str:
    width = max(len(n) for n in SCENARIOS)
    return "".join(f"{name:<{width}}  {cls.summary}\n" for name, cls in SCENARIOS.items())


def run_once(
    scenario: Scenario, options: Options, args: argparse.Namespace, iteration: int
) -> RunResult:
    """One run: network, target, scenario, cleanup, checks.

    Resource handling: the `Run` closes parties, target and network whatever happens (a
    failed check, Ctrl-C). Error handling: setup problems become `RunResult.error` (exit
    2), never a traceback; a server that died once ready is the run's cause (exit 1).
    """
    record = RunRecord(
        scenario.name,
        timeout=options.timeout,
        settle=options.settle,
        seed=options.seed,
        server_command=args.server_cmd,
        specific={} if options.ours else None,
    )
    result = RunResult(scenario.name, iteration, record)
    run = Run(
        scenario.name,
        options,
        args.server_cmd,
        network=network_options(args, options.clients),
        impair=args.impair,
        server_options=(*scenario.server_options, *secure_of(args).server_options())
        if options.ours
        else (),
        readiness=args.ready,
        record=record,
    )
    progress: Progress | None = None
    try:
        with run as ctx:
            if not args.quiet:
                progress = Progress(f"{scenario.name} run {iteration}", record)
                progress.start()
            try:
                scenario.run(ctx)
            except (SetupError, PartyError):
                # A client that could not join because the server had died: the death is
                # what happened, not a client's setup failure.
                run.server_died("while the parties were joining")
                raise
            finally:
                if progress is not None:
                    progress.stop()
    except (SetupError, PartyError) as exc:
        result.error = str(exc)
    result.server_exit = run.server_exit
    result.server_stderr = "\n".join(run.server_stderr)
    result.server_death = run.death
    result.server_ready = run.target.ready_how if run.target is not None else ""
    if result.error and (run.death or check_no_reset(record).failed):
        # Parties that cannot even join because the server died, or because the
        # impairment resets every connection (reset-after=0, or a budget smaller than the
        # joining), are not a setup mistake: the run fails (exit 1) with that as its cause.
        record.notes.append(f"the run could not get going: {result.error}")
        result.error = ""
    if not result.error:
        result.checks = run_checks(record)
    return result


def secure_of(args: argparse.Namespace) -> Secure:
    return Secure(args.tls_cert, args.tls_key, args.tls_ca, args.password_file, args.tls_insecure)


class _Terminated(Exception):
    """SIGTERM/SIGHUP arrived: unwind through every `finally` so children are ended."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


# A run keeps every line every party showed (216,000 lines at 100 x 20, 850,000 at 500
# parties), and the cyclic collector's full passes walk all of them again and again: it
# took 1.7 s of a 100-party run's 6.4 s of harness CPU. The records hold no cycles worth
# collecting while a run lasts; young passes still run.
FULL_COLLECTIONS_OFF = 10**9  # gc threshold of the oldest generation: never reached


@contextlib.contextmanager
def few_full_collections() -> Iterator[None]:
    """No automatic full garbage collection inside (young generations are still
    collected); the thresholds are as they were afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], FULL_COLLECTIONS_OFF)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def main(argv: list[str] | None = None) -> int:
    """The command line's exit code. Called as the program (``argv`` None), the process
    ends right here once its output is flushed: freeing every recorded line one by one
    as the interpreter shuts down took 2.3 s after a 100-party run and 23 s after a
    500-party one, with every child already ended and reaped and every report written."""
    with few_full_collections():
        code = run_command_line(argv)
    if argv is not None:
        return code
    remove_cache()  # what exit handlers would have done
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run_command_line(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        sys.stdout.write(list_scenarios())
        return EXIT_PASS
    if args.scenario not in SCENARIOS:
        parser.error(f"unknown scenario {args.scenario!r} (known: {', '.join(SCENARIOS)})")
    scenario = SCENARIOS[args.scenario]()
    options = Options(
        clients=max(args.clients, scenario.min_clients),
        messages=args.messages,
        seed=args.seed,
        timeout=args.timeout
        or default_timeout(max(args.clients, scenario.min_clients), args.messages),
        settle=args.settle,
        client_template=args.client_cmd,
        ours=is_ours(args.server_cmd),
        script=args.script,
        echo=args.echo,
        join_lines=tuple(args.join),
        max_line=args.max_line,
        cluster_nodes=args.cluster,
        cluster_lease=args.cluster_lease,
        client_options=secure_of(args).client_options(),
    )
    problem = secure_of(args).problem()
    if problem is not None:
        parser.error(problem)
    if scenario.local_only and args.hosts == "ssh":
        print(
            f"chatbox-harness: {scenario.local_only} (--hosts loopback or netns)", file=sys.stderr
        )
        return EXIT_SETUP
    if args.node_host and (args.hosts != "ssh" or not args.cluster):
        print("chatbox-harness: --node-host needs --hosts ssh and --cluster N", file=sys.stderr)
        return EXIT_SETUP
    try:
        scenario.check_options(options)
    except ValueError as exc:
        print(f"chatbox-harness: {exc}", file=sys.stderr)
        return EXIT_SETUP
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    results: list[RunResult] = []
    command = shlex.join(["python", "-m", "harness.run", *(sys.argv[1:] if argv is None else argv)])
    try:
        for i in range(1, args.repeat + 1):
            result = run_once(scenario, options, args, i)
            results.append(result)
            if args.artifacts:
                write_artifacts(args.artifacts, result, results, command)
            if result.error:
                break
    except (KeyboardInterrupt, _Terminated) as exc:
        print(
            f"\nchatbox-harness: interrupted ({exc or 'SIGINT'}); everything was stopped",
            file=sys.stderr,
        )
        return EXIT_SETUP
    except OSError as exc:
        print(f"chatbox-harness: cannot write report: {exc}", file=sys.stderr)
        return EXIT_SETUP
    errors = [r for r in results if r.error]
    code = EXIT_SETUP if errors else (EXIT_PASS if all(r.passed for r in results) else EXIT_FAIL)
    for r in errors:
        print(f"chatbox-harness: setup failed: {r.error}", file=sys.stderr)
    if results and not errors:
        sys.stdout.write(summary(results))
    try:
        if args.json:
            write(args.json, to_json(results, code))
        if args.junit:
            write(args.junit, to_junit(results))
        if args.html:
            write(args.html, html_report(results, command))
    except OSError as exc:
        print(f"chatbox-harness: cannot write report: {exc}", file=sys.stderr)
        return EXIT_SETUP
    return code


if __name__ == "__main__":
    sys.exit(main())
