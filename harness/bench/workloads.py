"""The workloads: what the load generator makes a server do, and what it measures.

Each workload starts a fresh server, connects its clients, proves they are all in the
room (`Swarm.settle`), and only then starts the clock. Each returns a plain dict (the
JSON the report and the plot read) with ``valid`` and the ledger's ``tally``: a server
that loses, repeats, reorders or breaks a line gets ``valid: false`` and its figures are
shown as INVALID, never as fast.

- ``pingpong``: two clients bounce a line back and forth; round-trip p50 / p99 and the
  server's CPU (all its processes and threads, /proc/PID/stat) per relayed line.
- ``duplex``: two clients each send a stream at the same time; deliveries per second.
- ``fanout10`` / ``fanout100``: every client sends a stream to all the others.
  Streams also give the server's CPU per delivery.
- ``connections``: ramp up to the server's client target in steps; at each step the
  time it took to get them all in the room, the memory (PSS) of the server and all its
  workers, and how long one broadcast takes to reach everybody.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from harness.bench import ledger
from harness.bench.cpu import TICK
from harness.bench.loadgen import Client, LoadError, Swarm
from harness.bench.servers import RunningServer, ServerError, ServerSpec

Result = dict[str, Any]

WORKLOADS = ("pingpong", "duplex", "fanout10", "fanout100", "connections")

# Client counts the ramp stops at to measure; the server's own target is always last.
RAMP_STEPS = (10, 100, 250, 500, 1000, 2000, 3000, 5000)


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does (the issue's sizes; --quick shrinks them)."""

    rounds: int = 2000  # ping-pong round trips measured
    warmup: int = 200  # round trips before the clock starts
    duplex_lines: int = 50_000  # lines each of the two clients sends
    fanout10_lines: int = 5_000  # lines each of 10 clients sends
    # 100 clients each sending 100 lines is 990,000 deliveries: as many as the
    # 10-client case's 450,000 or more, without taking minutes on a slow server.
    fanout100_lines: int = 100
    broadcasts: int = 5  # broadcasts measured at each ramp step
    ramp: int | None = None  # override every server's ramp target
    ramp_cap: int | None = None  # what the descriptor limit allows, if less
    deadline: float = 300.0  # no workload runs longer than this (seconds)
    idle: float = 10.0  # nothing delivered for this long: the server has stopped


QUICK = Sizes(
    rounds=100,
    warmup=10,
    duplex_lines=2000,
    fanout10_lines=200,
    fanout100_lines=5,
    broadcasts=2,
    ramp=50,
    deadline=60.0,
    idle=5.0,
)


def run(name: str, spec: ServerSpec, sizes: Sizes) -> Result:
    """Run one workload against a fresh server; never raises for a server's failure."""
    started = time.perf_counter()
    try:
        with RunningServer(spec) as server:
            result = run_on(name, server, sizes)
    except (ServerError, LoadError) as exc:
        result = {"valid": False, "error": str(exc)}
    except OSError as exc:
        result = {"valid": False, "error": f"{type(exc).__name__}: {exc}"}
    result["workload"] = name
    result["seconds"] = round(time.perf_counter() - started, 2)
    result.setdefault("error", None)
    return result


def run_on(name: str, server: RunningServer, sizes: Sizes) -> Result:
    """Run one workload against a server that is already running (for profiling)."""
    result = _RUNNERS[name](server, sizes)
    if not server.alive():
        result["valid"] = False
        result["error"] = "the server exited during the workload"
    return result


def _deadline(sizes: Sizes) -> float:
    return time.monotonic() + sizes.deadline


def pingpong(server: RunningServer, sizes: Sizes) -> Result:
    """Client 0 sends a line; client 1 answers the moment it arrives; client 0 times
    the round trip (two relays through the server)."""
    deadline = _deadline(sizes)
    with Swarm(server.host, server.port, server.endpoints) as swarm:
        swarm.grow(2, deadline, server.spec.backlog)
        a, b = swarm.clients
        swarm.expect(swarm.clients, 1 << 62)  # capture both sides for the ledger
        total = sizes.warmup + sizes.rounds
        rtts: list[float] = []
        stalled = False
        cpu_start = server.cpu_seconds()
        store_start = server.store_cpu_seconds()
        for seq in range(total):
            if seq == sizes.warmup:
                cpu_start = server.cpu_seconds()  # the CPU counted is the measured rounds'
                store_start = server.store_cpu_seconds()
            start = time.perf_counter()
            if not (
                _bounce(swarm, a, b, seq, deadline, sizes)
                and _bounce(swarm, b, a, seq, deadline, sizes)
            ):
                stalled = True  # a line never came: the ledger says which
                break
            assert a.seen_at is not None
            if seq >= sizes.warmup:
                rtts.append(a.seen_at - start)
        cpu = server.cpu_seconds() - cpu_start
        store = server.store_cpu_seconds() - store_start
        tally = ledger.verify_all(
            ((c.index, c.received()) for c in swarm.clients), {0: total, 1: total}
        )
    rtts.sort()
    return {
        "clients": 2,
        "rounds": len(rtts),
        "rtt_p50_us": _us(_percentile(rtts, 50)),
        "rtt_p99_us": _us(_percentile(rtts, 99)),
        **_cpu(cpu, 2 * len(rtts), "line"),
        **_store_cpu(server, store, 2 * len(rtts), "line"),
        "valid": tally.valid and not stalled,
        "tally": tally.as_dict(),
        "error": "a line never arrived (timed out)" if stalled else None,
    }


def _bounce(
    swarm: Swarm, sender: Client, receiver: Client, seq: int, deadline: float, sizes: Sizes
) -> bool:
    """``sender`` sends line ``seq``; wait until ``receiver`` has it (kernel time in
    ``receiver.seen_at``). False if it never came."""
    swarm.watch([receiver], ledger.token(sender.index, seq))
    swarm.send_now(sender, ledger.line(sender.index, seq))
    return swarm.pump(lambda: swarm.seen >= 1, deadline, sizes.idle)


def streams(server: RunningServer, sizes: Sizes, clients: int, lines: int) -> Result:
    """Every client sends ``lines`` lines at full speed, all at once; each should get
    every other client's lines. Deliveries per second, from the first send to the last
    client holding everything it should."""
    deadline = _deadline(sizes)
    with Swarm(server.host, server.port, server.endpoints) as swarm:
        swarm.grow(clients, deadline, server.spec.backlog)
        outboxes = {c.index: ledger.stream(c.index, lines) for c in swarm.clients}
        swarm.expect(swarm.clients, ledger.markers_per(lines * (clients - 1)))
        cpu_start = server.cpu_seconds()
        store_start = server.store_cpu_seconds()
        start = time.perf_counter()
        swarm.load(outboxes)
        finished = swarm.pump(swarm.complete(clients), deadline, sizes.idle)
        end = time.perf_counter()
        cpu = server.cpu_seconds() - cpu_start
        store = server.store_cpu_seconds() - store_start
        if finished:
            end = max(c.done_at or end for c in swarm.clients)
        elapsed = end - start
        closed = swarm.closed
        captured = [(c.index, c.received()) for c in swarm.clients]
        tally = ledger.verify_all(captured, {c.index: lines for c in swarm.clients})
        disagreement = ledger.order_disagreement(captured)
        if disagreement:
            tally.reordered += 1
            tally.problems.append(disagreement)
    expected = clients * (clients - 1) * lines
    result: Result = {
        "clients": clients,
        "lines_per_client": lines,
        "deliveries": tally.delivered,
        "expected": expected,
        "seconds_measured": round(elapsed, 4),
        "deliveries_per_s": round(tally.delivered / elapsed) if elapsed > 0 else None,
        **_cpu(cpu, tally.delivered, "delivery"),
        **_store_cpu(server, store, tally.delivered, "delivery"),
        "valid": tally.valid and finished,
        "tally": tally.as_dict(),
    }
    if closed:
        result["error"] = f"the server closed {closed} of {clients} connections"
    elif not finished and tally.valid:
        result["error"] = "stopped delivering before the end (timed out)"
    return result


def connections(server: RunningServer, sizes: Sizes) -> Result:
    """Ramp up in steps to the server's target, measuring at each step."""
    target = sizes.ramp or server.spec.ramp
    capped = sizes.ramp_cap is not None and sizes.ramp_cap < target
    if capped:
        assert sizes.ramp_cap is not None
        target = sizes.ramp_cap
    steps = [s for s in RAMP_STEPS if s < target] + [target]
    deadline = _deadline(sizes)
    base_pss, _ = server.pss_bytes()
    points: list[Result] = []
    error = None
    tally = ledger.Tally()
    connecting = 0.0  # time spent getting clients in, without the measuring in between
    with Swarm(server.host, server.port, server.endpoints) as swarm:
        for step in steps:
            start = time.perf_counter()
            try:
                joined = swarm.grow(step, deadline, server.spec.backlog)
                connecting += joined - start
            except LoadError as exc:
                error = f"at {step} clients: {exc}"
                break
            pss, processes = server.pss_bytes()
            latencies, missed = _broadcasts(swarm, sizes, deadline, step)
            if missed:
                tally.lost += missed
                tally.problems.append(f"{missed} broadcast deliveries missing at {step} clients")
            points.append(
                {
                    "clients": step,
                    "connect_s": round(connecting, 3),
                    "pss_bytes": pss,
                    "processes": processes,
                    "pss_per_client_bytes": round(pss / step),
                    "pss_added_per_client_bytes": round((pss - base_pss) / step),
                    "broadcast_p50_ms": _ms(_percentile(latencies, 50)),
                    "broadcast_p99_ms": _ms(_percentile(latencies, 99)),
                    "broadcast_max_ms": _ms(latencies[-1] if latencies else None),
                }
            )
            if missed:
                error = f"at {step} clients: broadcasts did not reach everybody"
                break
    held = points[-1]["clients"] if points else 0
    return {
        "clients": held,
        "target": target,
        "capped_by_fd_limit": capped,
        "held": held,
        "reached_target": held >= target and error is None,
        "base_pss_bytes": base_pss,
        "steps": points,
        "valid": tally.valid,
        "tally": tally.as_dict(),
        "error": error,
    }


def _broadcasts(swarm: Swarm, sizes: Sizes, deadline: float, step: int) -> tuple[list[float], int]:
    """Client 0 broadcasts ``sizes.broadcasts`` lines, one after the other has reached
    everybody; returns each delivery's latency (sorted) and how many never came."""
    sender, others = swarm.clients[0], swarm.clients[1:]
    latencies: list[float] = []
    missed = 0
    for round_ in range(sizes.broadcasts):
        seq = step * 1000 + round_
        swarm.watch(others, ledger.token(0, seq))
        start = time.perf_counter()
        swarm.send_now(sender, ledger.line(0, seq))
        swarm.pump(lambda: swarm.seen >= len(others), deadline, sizes.idle)
        got = [c.seen_at - start for c in others if c.seen_at is not None]
        latencies.extend(got)
        missed += len(others) - len(got)
        if missed:
            break
    for client in others:
        client.needle = None
    latencies.sort()
    return latencies, missed


def _cpu(seconds: float, count: int, per: str) -> Result:
    """The server's CPU over a timed window, per relayed line or per delivery. The
    kernel counts CPU in clock ticks per process, so the figure is exact to
    ``cpu_tick_us_per_*`` per process the server runs as."""
    return {
        "server_cpu_s": round(seconds, 3),
        f"cpu_per_{per}_count": count,
        f"cpu_per_{per}_us": round(1e6 * seconds / count, 4) if count else None,
        f"cpu_tick_us_per_{per}": round(1e6 / TICK / count, 4) if count else None,
    }


def _store_cpu(server: RunningServer, seconds: float, count: int, per: str) -> Result:
    """A cluster's redis-server's share of the server CPU (already counted in it)."""
    if not server.spec.nodes:
        return {}
    return {
        "store_cpu_s": round(seconds, 3),
        f"store_cpu_per_{per}_us": round(1e6 * seconds / count, 4) if count else None,
    }


def _percentile(ordered: list[float], pct: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _duplex(server: RunningServer, sizes: Sizes) -> Result:
    return streams(server, sizes, 2, sizes.duplex_lines)


def _fanout10(server: RunningServer, sizes: Sizes) -> Result:
    return streams(server, sizes, 10, sizes.fanout10_lines)


def _fanout100(server: RunningServer, sizes: Sizes) -> Result:
    return streams(server, sizes, 100, sizes.fanout100_lines)


_RUNNERS = {
    "pingpong": pingpong,
    "duplex": _duplex,
    "fanout10": _fanout10,
    "fanout100": _fanout100,
    "connections": connections,
}
