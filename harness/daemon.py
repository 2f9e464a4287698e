"""A daemon: one background server process, from start to its readiness to its reaping.

Every launcher in the tree starts servers through `Daemon` - the harness's target and
impairment proxy, the benchmark's servers, the tests' servers - so there is one way to:

- start a process in its own process group (a new session), registered with the
  `harness.processes.Lifeline`, so ending the group ends whatever it forked;
- know it is ready, by one announce line (`ANNOUNCE`: ``listening on HOST:PORT``) or by a
  port check the caller supplies (`Readiness`); a process that exits first is reported
  with its exit status and its stderr, whole (the drains are joined first, so nothing it
  wrote before it died is lost, however loaded the machine);
- keep its stderr whole, every line with the time it arrived (no cap: the reports show
  its head and tail, the artifacts all of it);
- end it (SIGTERM to the group, SIGKILL after a grace) and reap it, saying whether it had
  already died before it was asked to stop.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.processes import Lifeline, child_env, end_group, preexec

# The one announce line of the tree: this project's server, the impairment proxy, the
# asyncio baseline, the C chat box and the test relays all print it first on stdout.
ANNOUNCE = re.compile(r"listening on \[?([^\]\s]*)\]?:(\d+)")
DRAIN_JOIN_S = 5.0  # reading a stopped process's last output must not hang (a grandchild
# may hold its pipes open); long enough for a loaded machine to read what is there.
# Auto readiness: stdout silent this long means "it never announces". Long enough for a
# server that does announce to get there on a loaded machine (a Python relay at load
# average 100 took over 2 s, and was probed - and killed by the probe - first).
AUTO_GRACE_S = 5.0
PROBE_INTERVAL_S = 0.25  # between port probes: gentle, a probe is a connection it must serve
HEAD_LINES = 20  # stderr lines a report shows from the start, and as many from the end

READY_MODES = ("auto", "line", "port", "delay")


class DaemonError(Exception):
    """A daemon could not be started or never became ready; the message says why."""


@dataclass(frozen=True)
class Readiness:
    """How to tell a started server is ready (``--ready``).

    ``line``: its ``listening on HOST:PORT`` line, nothing else (no connection is made);
    ``port``: the port accepts (probed every `PROBE_INTERVAL_S`); ``delay``: it is still
    alive ``seconds`` after the start; ``auto``: the line, unless stdout stays silent for
    `AUTO_GRACE_S`, then the port too.
    """

    mode: str = "auto"
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Readiness:
        """``line``, ``port``, ``auto`` or ``delay:SECONDS``; ValueError (one line) else."""
        mode, _, arg = text.partition(":")
        if mode == "delay":
            try:
                seconds = float(arg)
            except ValueError:
                raise ValueError(f"--ready delay:SECONDS needs a number, not {arg!r}") from None
            if not 0 < seconds < float("inf"):
                raise ValueError(f"--ready delay:SECONDS must be above 0, not {arg}")
            return cls("delay", seconds)
        if mode not in READY_MODES or arg:
            raise ValueError(f"--ready must be line, port, auto or delay:SECONDS, not {text!r}")
        return cls(mode)

    def __str__(self) -> str:
        return f"delay:{self.seconds:g}" if self.mode == "delay" else self.mode


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on this machine at ``address`` right now (bound a moment later by
    the server, so a parallel process can take it first: callers retry)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            s.bind(("", 0))
        return int(s.getsockname()[1])


def connectable(address: str, port: int) -> bool:
    """Whether ``address:port`` accepts a TCP connection from here (one connect, closed)."""
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def head_and_tail(lines: Sequence[str], count: int = HEAD_LINES) -> list[str]:
    """The first and last ``count`` lines, with a line saying how many are left out."""
    if len(lines) <= 2 * count:
        return list(lines)
    left_out = len(lines) - 2 * count
    return [*lines[:count], f"... ({left_out} more lines) ...", *lines[-count:]]


class Daemon:
    """A background process with its stdout scanned for `ANNOUNCE` and its stderr kept.

    Resource handling: own session and process group, registered with the lifeline;
    `stop` ends the group and reaps it, and joins the drains. Error handling: `start`
    raises `DaemonError` when the command cannot be executed, `wait_ready` when the
    process exits first or is not ready in time (both messages carry its stderr).
    """

    def __init__(self, label: str, argv: Sequence[str], *, keep_stdin: bool = False) -> None:
        self.label = label
        self.argv = list(argv)
        # An open, silent stdin for servers that end at EOF on it (ncat --chat).
        self.keep_stdin = keep_stdin
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        # When each stderr line arrived (time.monotonic), so a report can place what a
        # process said (the impairment proxy's resets) on the run's time line.
        self.stderr_at: list[float] = []
        self.announced: tuple[str, int] | None = None
        self.announce_line = ""
        self.ready_how = ""  # how readiness was established, for the report
        self.died_before_stop = ""  # exit status seen right before `stop` signalled it
        self.stopped = False  # `stop` has begun: from now on an exit is the one it caused
        self.cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._drains: list[threading.Thread] = []

    def start(self) -> None:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self.keep_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env=child_env(),
                preexec_fn=preexec(),
            )
        except OSError as exc:
            raise DaemonError(
                f"cannot start {self.label} ({self.argv[0]}): {exc.strerror}"
            ) from None
        Lifeline.get().register(self.proc.pid)
        for stream, sink, name in (
            (self.proc.stdout, self.stdout, "out"),
            (self.proc.stderr, self.stderr, "err"),
        ):
            drain = threading.Thread(
                target=self._drain, args=(stream, sink), name=f"{self.label}-{name}", daemon=True
            )
            drain.start()
            self._drains.append(drain)

    def _drain(self, stream: object, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self.cond:
                sink.append(line)
                if sink is self.stderr:
                    self.stderr_at.append(time.monotonic())
                if sink is self.stdout and self.announced is None:
                    match = ANNOUNCE.search(line)
                    if match:
                        self.announced = (match.group(1), int(match.group(2)))
                        self.announce_line = line.strip()
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def exit_status(self) -> str:
        """Empty while running; otherwise how it ended (``exit N`` or ``signal N``)."""
        if self.proc is None or self.proc.poll() is None:
            return ""
        code = self.proc.returncode
        return f"exit {code}" if code >= 0 else f"signal {-code}"

    def join_drains(self) -> None:
        """Read what the process wrote to the end (bounded): call once it has exited."""
        for drain in self._drains:
            drain.join(timeout=DRAIN_JOIN_S)

    def _wait(self, until: Callable[[], bool], deadline: float) -> None:
        with self.cond:
            self.cond.wait_for(
                lambda: until() or self.exit_status() != "",
                timeout=max(0.0, deadline - time.monotonic()),
            )

    def wait_ready(
        self, readiness: Readiness, port: int, probe: Callable[[int], bool], deadline: float
    ) -> int:
        """Wait until the process is ready; return the port it serves on.

        ``probe(port)`` checks the port (connecting to it, or reading the kernel's socket
        table); it is only called in the port modes. Error handling: `DaemonError` with the
        exit status and the stderr when it exits first or the deadline passes.
        """
        t0 = time.monotonic()
        mode = readiness.mode
        if mode == "delay":
            self._wait(lambda: False, min(deadline, t0 + readiness.seconds))
            self._fail_if_exited()
            self.ready_how = f"delay ({readiness.seconds:g} s after the start, still running)"
            return port
        probes = 0
        while True:
            now = time.monotonic()
            probing = mode == "port" or (
                mode == "auto" and now - t0 >= AUTO_GRACE_S and not self.stdout
            )
            if self.exit_status():
                # It may have announced and died at once: read its last words before
                # judging, so "ready, then died" is not told as "never ready".
                self.join_drains()
            if mode != "port" and self.announced is not None:
                self.ready_how = f"line ({self.announce_line!r} after {now - t0:.2f} s)"
                return self.announced[1]
            self._fail_if_exited()
            if probing:
                probes += 1
                if probe(port):
                    silent = " (stdout silent)" if mode == "auto" else ""
                    self.ready_how = (
                        f"port{silent} ({probes} probe connection(s) to port {port}, "
                        f"ready after {time.monotonic() - t0:.2f} s)"
                    )
                    return port
            if time.monotonic() >= deadline:
                what = "accept connections" if probing else "say 'listening on HOST:PORT'"
                hint = "" if probing or mode != "auto" else " (try --ready=port)"
                raise DaemonError(
                    f"the {self.label} did not {what} in time{hint}; "
                    f"its stderr:\n{self.stderr_text() or '(empty)'}"
                )
            if probing:
                step = PROBE_INTERVAL_S
            elif mode == "auto" and not self.stdout:
                step = max(0.0, t0 + AUTO_GRACE_S - time.monotonic())
            else:
                step = deadline - time.monotonic()
            self._wait(
                lambda: mode != "port" and self.announced is not None,
                min(deadline, time.monotonic() + step),
            )

    def _fail_if_exited(self) -> None:
        status = self.exit_status()
        if status:
            self.join_drains()  # its last words, before anything reports them
            raise DaemonError(
                f"the {self.label} exited ({status}) before it was ready; "
                f"its stderr:\n{self.stderr_text() or '(empty)'}"
            )

    def stop(self) -> str:
        """End the process group and reap; return how it ended.

        Whether it had died before (`died_before_stop`) is looked at right before the
        SIGTERM, so a death is never mistaken for the end the harness asked for.
        """
        if self.proc is None:
            return ""
        proc = self.proc
        if not self.stopped:
            self.stopped = True
            self.died_before_stop = self.exit_status()
        end_group(proc.pid, lambda: proc.poll() is not None)
        Lifeline.get().unregister(proc.pid)
        # Its last words (a reset the proxy reported just before it ended) are still in
        # the pipes: read them to the end, bounded in case a grandchild holds them open.
        self.join_drains()
        if proc.stdin is not None:
            proc.stdin.close()
        return self.exit_status()

    def died(self) -> str:
        """How it ended on its own: "" while it runs or when `stop` ended it."""
        return self.died_before_stop if self.stopped else self.exit_status()

    def stderr_lines(self) -> list[str]:
        with self.cond:
            return list(self.stderr)

    def stderr_text(self, count: int = HEAD_LINES) -> str:
        """Its stderr for a message: all of it if short, else its head and its tail."""
        return "\n".join(head_and_tail(self.stderr_lines(), count))

    def stderr_since(self, t0: float) -> list[tuple[float, str]]:
        """Every stderr line so far with its time in seconds since ``t0`` (monotonic)."""
        with self.cond:
            return [(at - t0, line) for at, line in zip(self.stderr_at, self.stderr, strict=True)]
