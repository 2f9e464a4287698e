"""A TCP impairment proxy: the network's bad days, on demand (think Toxiproxy's toxics).

``python -m harness.impair --listen HOST:PORT --target HOST:PORT --spec SPEC`` accepts
connections on ``--listen``, opens one to ``--target`` for each, and forwards both
directions through the same toxics. The first stdout line is ``listening on HOST:PORT``
(the real port when 0 was asked for); nothing else goes to stdout.

SPEC is comma-separated ``name=value`` toxics (empty: a plain proxy):

- ``delay=50ms``: every byte arrives this much later (each direction, so RTT grows by 2x).
- ``jitter=10ms``: the delay varies by up to +-this, uniformly. TCP promises order, so
  jitter never reorders bytes within a stream: a chunk is never delivered before the one
  that arrived ahead of it (delivery times only grow).
- ``bandwidth=64kbit``: each direction is throttled to this rate (``bit``, ``kbit``,
  ``mbit``, ``gbit``; or bytes: ``bps``, ``kbps``, ``mbps``).
- ``slice=N``: deliver at most N bytes per write, so ``slice=1`` hands the receiver one
  byte at a time: exactly how line framing breaks in servers that assume one recv is one
  line.
- ``reset-after=N``: after N bytes have passed through a connection (both directions
  counted together) it is reset: both sockets are closed with SO_LINGER 0, which sends a
  TCP RST, and nothing beyond byte N is delivered.

Rules: a reset on either side is passed on as a reset to the other (never softened into an
orderly close); an orderly close (EOF) is passed on as one once the bytes ahead of it are
delivered. Where the kernel has ``tc netem``, delay/jitter/rate could instead be set on the
veth links of a netns network; this proxy works everywhere, including across ssh hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the proxy program itself needs neither
    from harness.daemon import Daemon
    from harness.hosts.base import Host

# Bytes read per recv: big enough that a fast stream costs few Python calls.
READ_SIZE = 65536
# Chunks queued per direction before the proxy stops reading: bounds its memory (4 MiB per
# direction) and passes back-pressure on to the sender, as a real slow link would.
QUEUE_CHUNKS = 64
# With a bandwidth limit, a chunk is sent in pieces of at most this many seconds' worth,
# so the rate is smooth rather than a burst followed by a long silence.
PACING_S = 0.01

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {  # to bytes per second
    "bit": 1 / 8,
    "kbit": 1000 / 8,
    "mbit": 1e6 / 8,
    "gbit": 1e9 / 8,
    "bps": 1.0,
    "kbps": 1000.0,
    "mbps": 1e6,
}
TOXICS = ("delay", "jitter", "bandwidth", "slice", "reset-after")


class SpecError(ValueError):
    """A bad --spec: the message is the one line the user sees."""


@dataclass(frozen=True)
class Toxics:
    """The impairments applied to every connection, both directions."""

    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, +-
    rate: float | None = None  # bytes per second
    slice: int | None = None  # bytes per write
    reset_after: int | None = None  # bytes per connection, both directions together

    def describe(self) -> str:
        parts = []
        if self.delay:
            parts.append(f"delay={self.delay * 1000:g}ms")
        if self.jitter:
            parts.append(f"jitter={self.jitter * 1000:g}ms")
        if self.rate is not None:
            parts.append(f"bandwidth={self.rate * 8:g}bit")
        if self.slice is not None:
            parts.append(f"slice={self.slice}")
        if self.reset_after is not None:
            parts.append(f"reset-after={self.reset_after}")
        return ",".join(parts) or "none"


def _quantity(text: str, units: dict[str, float], what: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text.strip().lower())
    if not match or match.group(2) not in units:
        known = ", ".join(units)
        raise SpecError(f"{what}={text!r}: expected a number with a unit ({known})")
    return float(match.group(1)) * units[match.group(2)]


def _count(text: str, what: str, minimum: int) -> int:
    if not text.strip().isdigit() or int(text) < minimum:
        raise SpecError(f"{what}={text!r}: expected a whole number >= {minimum}")
    return int(text)


def parse_spec(spec: str) -> Toxics:
    """``delay=50ms,jitter=10ms,...`` -> `Toxics`. Raises `SpecError` with one clear line."""
    values: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if name not in TOXICS:
            raise SpecError(f"unknown toxic {name!r} (known: {', '.join(TOXICS)})")
        if not eq or not value.strip():
            raise SpecError(f"{name} needs a value ({name}=...)")
        if name in values:
            raise SpecError(f"{name} given twice")
        values[name] = value
    delay = _quantity(values["delay"], _TIME_UNITS, "delay") if "delay" in values else 0.0
    jitter = _quantity(values["jitter"], _TIME_UNITS, "jitter") if "jitter" in values else 0.0
    rate = None
    if "bandwidth" in values:
        rate = _quantity(values["bandwidth"], _RATE_UNITS, "bandwidth")
        if rate <= 0:
            raise SpecError("bandwidth must be more than 0")
    return Toxics(
        delay=delay,
        jitter=jitter,
        rate=rate,
        slice=_count(values["slice"], "slice", 1) if "slice" in values else None,
        reset_after=(
            _count(values["reset-after"], "reset-after", 0) if "reset-after" in values else None
        ),
    )


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port). Raises `SpecError`."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]+):(\d+)", text.strip())
    if not match:
        raise SpecError(f"{what} {text!r}: expected HOST:PORT")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise SpecError(f"{what} {text!r}: port out of range 0-65535")
    return host, port


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER on, timeout 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Connection:
    """One proxied connection: two directions, one shared reset budget.

    Resource handling: both sockets are closed (orderly, or by reset) before `run` returns.
    Error handling: a reset or error on either side resets the other; nothing is raised.
    """

    def __init__(self, toxics: Toxics, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]):
        self.toxics = toxics
        self.client = client
        self.budget = toxics.reset_after  # bytes left before the reset, if any
        self.was_reset = False
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = [client[1]]
        peer = client[1].get_extra_info("peername")
        # "client 127.0.0.1:40312": the client's own address, as a user can match it.
        if isinstance(peer, tuple):
            host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
            self.peer = f"client {host}:{peer[1]}"
        else:
            self.peer = "client"

    async def run(self, target: tuple[str, int]) -> None:
        c_reader, c_writer = self.client
        try:
            s_reader, s_writer = await asyncio.open_connection(*target)
        except OSError as exc:
            print(f"impair: cannot reach {target[0]}:{target[1]}: {exc}", file=sys.stderr)
            _reset(c_writer)
            return
        self.writers.append(s_writer)
        for w in self.writers:
            with contextlib.suppress(OSError):
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.budget == 0:
            self._reset_all("at once (reset-after=0)")
            return
        self.tasks = [
            asyncio.create_task(self._direction(c_reader, s_writer)),
            asyncio.create_task(self._direction(s_reader, c_writer)),
        ]
        try:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            for task in self.tasks:
                task.cancel()
            if not self.was_reset:
                for w in self.writers:
                    w.close()  # orderly: whatever is still buffered is sent first
                for w in self.writers:
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

    def _reset_all(self, why: str) -> None:
        """Reset both sockets and stop both directions (idempotent)."""
        if self.was_reset:
            return
        self.was_reset = True
        print(f"impair: reset {self.peer} {why}", file=sys.stderr, flush=True)
        for w in self.writers:
            _reset(w)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one side and queue stamped chunks; a pump delivers them to the other side."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        pump = asyncio.create_task(self._deliver(queue, writer))
        self.tasks.append(pump)
        loop = asyncio.get_running_loop()
        last = 0.0
        try:
            while True:
                try:
                    data = await reader.read(READ_SIZE)
                except OSError:
                    self._reset_all("because one side reset")
                    return
                if not data:
                    break
                lag = self.toxics.delay + random.uniform(-self.toxics.jitter, self.toxics.jitter)
                # Never before the chunk ahead of it: jitter must not reorder a stream.
                last = max(last, loop.time() + max(lag, 0.0))
                await queue.put((last, data))
            await queue.put(None)
            await pump
        finally:
            pump.cancel()

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        free_at = 0.0  # when the throttled link can take the next byte
        rate = self.toxics.rate
        piece = self.toxics.slice or READ_SIZE
        if rate is not None:
            piece = min(piece, max(1, int(rate * PACING_S)))
        while (item := await queue.get()) is not None:
            due, data = item
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            for start in range(0, len(data), piece):
                chunk = data[start : start + piece]
                if self.budget is not None:
                    chunk = chunk[: self.budget]  # shared with the other direction
                if rate is not None:
                    free_at = max(free_at, loop.time())
                    if free_at > loop.time():
                        await asyncio.sleep(free_at - loop.time())
                    free_at += len(chunk) / rate
                try:
                    writer.write(chunk)
                    await writer.drain()
                except OSError:
                    self._reset_all("because one side reset")
                    return
                if self.budget is not None:
                    self.budget -= len(chunk)
                    if self.budget <= 0:
                        self._reset_all(f"after {self.toxics.reset_after} bytes (reset-after)")
                        return
                if self.toxics.slice is not None:
                    await asyncio.sleep(0)  # let the receiver's side run between slices
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()  # an orderly close, after every byte ahead of it


async def serve(listen: tuple[str, int], target: tuple[str, int], toxics: Toxics) -> None:
    """Proxy until SIGTERM/SIGINT; print ``listening on HOST:PORT`` once bound.

    Resource handling: on a signal the listener closes and every open connection is
    aborted before returning.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await Connection(toxics, (reader, writer)).run(target)
        except asyncio.CancelledError:
            # Shutdown: the connection has closed its sockets on the way out. Ending
            # normally keeps asyncio's stream callback from logging a "cancelled" trace.
            pass
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(accept, listen[0], listen[1], reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on {shown}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.wait_closed()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block: the harness shows it as the reason.
        self.exit(2, f"impair: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m harness.impair",
        description="TCP proxy that delays, jitters, throttles, slices or resets traffic.",
        epilog="SPEC: comma-separated delay=50ms, jitter=10ms, bandwidth=64kbit, slice=1, "
        "reset-after=N. The first stdout line is 'listening on HOST:PORT'.",
    )
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on (port 0: any)")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--spec", default="", help="the toxics (default: none)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        listen = parse_address(args.listen, "--listen")
        target = parse_address(args.target, "--target")
    except SpecError as exc:
        print(f"impair: {exc}", file=sys.stderr)
        return 2
    try:
        toxics = parse_spec(args.spec)
    except SpecError as exc:
        print(f"impair: bad --spec {args.spec!r}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(listen, target, toxics))
    except OSError as exc:
        print(f"impair: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a SIGINT before the handler was installed
        return 0
    return 0


def launch(host: Host, listen: str, port: int, spec: str, label: str, deadline: float) -> Daemon:
    """Start this proxy on ``host`` in front of ``port`` there; return it once it listens
    (its port is ``announced[1]``).

    It reaches the server over the host's own loopback when the server listens there or on
    every address, else on the address the server bound. Resource handling: the caller
    stops the returned daemon. Error handling: `DaemonError` with its stderr.
    """
    from harness.daemon import Daemon, Readiness

    target = "127.0.0.1" if listen.startswith("127.") or listen == "0.0.0.0" else listen
    argv = [host.python, "-m", "harness.impair", "--listen", f"{listen}:0"]
    argv += ["--target", f"{target}:{port}", "--spec", spec]
    proxy = Daemon(label, host.command(argv))
    proxy.start()
    try:
        proxy.wait_ready(Readiness("line"), 0, lambda _: False, deadline)
    except BaseException:
        proxy.stop()
        raise
    return proxy


if __name__ == "__main__":
    sys.exit(main())
