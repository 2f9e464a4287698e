"""The benchmark: its ledger catches every kind of damage, and a real run reports
figures for honest servers and INVALID for a lossy one.

The runs use --quick sizes; nothing here asserts a speed (speed is measured by the
benchmark itself, as ratios, never by the tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.bench import ledger

REPO = Path(__file__).resolve().parents[1]

# --- the ledger (no sockets) ----------------------------------------------------------


def _lines(sender: int, seqs: list[int], prefix: bytes = b"<guest1> ") -> bytes:
    return b"".join(prefix + ledger.line(sender, q) for q in seqs)


LEDGER_CASES = [
    # (name, bytes received, expected senders, what the tally must say)
    ("complete", _lines(1, [0, 1, 2]), {1: 3}, {"valid": True, "delivered": 3}),
    ("any decoration", _lines(1, [0, 1], b"12:00 [user7] says: "), {1: 2}, {"valid": True}),
    ("notices ignored", b"* guest2 joined\n" + _lines(1, [0, 1]), {1: 2}, {"valid": True}),
    ("one lost", _lines(1, [0, 2]), {1: 3}, {"valid": False, "lost": 1}),
    ("tail lost", _lines(1, [0, 1]), {1: 3}, {"valid": False, "lost": 1}),
    ("swapped", _lines(1, [0, 2, 1]), {1: 3}, {"valid": False, "reordered": 1}),
    ("repeated", _lines(1, [0, 1, 1, 2]), {1: 3}, {"valid": False, "reordered": 1}),
    ("own echo ignored", _lines(1, [0]) + _lines(0, [0]), {1: 1}, {"valid": True}),
    ("stranger", _lines(1, [0]) + _lines(5, [0]), {1: 1}, {"valid": False, "unexpected": 1}),
]


@pytest.mark.parametrize(("name", "data", "expected", "want"), LEDGER_CASES)
def test_verify_judges_what_a_receiver_got(
    name: str, data: bytes, expected: dict[int, int], want: dict[str, object]
) -> None:
    tally = ledger.verify(data, expected, own=0)
    got = tally.as_dict()
    for key, value in want.items():
        assert got[key] == value, (name, got)


def _received(*orders: list[tuple[int, int]]) -> list[tuple[int, bytes]]:
    """Receiver i got the lines ``orders[i]`` ((sender, seq) pairs) in that order."""
    return [
        (i, b"".join(ledger.line(sender, seq) for sender, seq in order))
        for i, order in enumerate(orders)
    ]


def test_order_check_passes_receivers_that_agree() -> None:
    everyone = [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1)]
    orders = [[k for k in everyone if k[0] != me] for me in range(4)]
    assert ledger.order_disagreement(_received(*orders)) is None


def test_order_check_catches_two_receivers_that_disagree() -> None:
    # Receivers 3 and 4 disagree on 0:0 and 1:0, which receiver 2 (a reference) got.
    everyone = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    orders = [[k for k in everyone if k[0] != me] for me in range(5)]
    orders[4] = [(1, 0), (0, 0), (2, 0), (3, 0)]
    said = ledger.order_disagreement(_received(*orders))
    assert said is not None and "4" in said and "0:0" in said and "1:0" in said


def test_verify_catches_two_lines_run_together() -> None:
    whole = _lines(1, [0, 1, 2])
    merged = whole.replace(b"\n<guest1> ", b"<guest1> ", 1)  # the first LF went missing
    tally = ledger.verify(merged, {1: 3})
    assert not tally.valid
    assert tally.broken


def test_verify_catches_a_line_cut_short() -> None:
    whole = _lines(1, [0, 1, 2])
    first = ledger.token(1, 0)
    cut = whole.replace(first, first[:-3], 1)  # the token ends before its closing marker
    tally = ledger.verify(cut, {1: 3})
    assert not tally.valid
    assert tally.broken


def test_verify_catches_a_corrupted_digit() -> None:
    good = ledger.token(1, 1)
    bad = good.replace(b"1:1:", b"1:7:")  # the check digit no longer matches
    tally = ledger.verify(_lines(1, [0, 1]).replace(good, bad), {1: 2})
    assert tally.corrupt == 1 and not tally.valid


# --- real runs --------------------------------------------------------------------------

# A relay a careless author might write: "drop" loses every 97th line, "chunks"
# prefixes each received chunk instead of each line (as ncat --chat does), so lines
# split across two reads arrive broken.
RELAY = textwrap.dedent(
    """
    import socket, sys, threading
    port, mode = int(sys.argv[1]), sys.argv[2]
    server = socket.create_server(("127.0.0.1", port))
    clients, lock = [], threading.Lock()

    def serve(conn):
        pending, count = b"", 0
        while True:
            data = conn.recv(65536)
            if not data:
                break
            if mode == "chunks":
                out = b"<x> " + data
            else:
                pending += data
                *lines, pending = pending.split(b"\\n")
                kept = []
                for line in lines:
                    count += 1
                    if count % 97:
                        kept.append(b"<x> " + line + b"\\n")
                out = b"".join(kept)
            with lock:
                for other in clients:
                    if other is not conn:
                        other.sendall(out)
        with lock:
            clients.remove(conn)
        conn.close()

    while True:
        conn, _ = server.accept()
        with lock:
            clients.append(conn)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)


# A relay that keeps each sender's order but not one order for the room: what it read from
# several senders in one round it hands each receiver in another sender order.
ROTATING_RELAY = textwrap.dedent(
    """
    import selectors, socket, sys
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    clients, pending, got = [], {}, {}
    while True:
        # Lines are held until two senders have some (or 0.2 s pass quietly), so every
        # flush has two senders to rotate, however the load schedules them.
        events = sel.select(0.2)
        for key, _ in events:
            if key.fileobj is server:
                conn, _ = server.accept()
                clients.append(conn)
                pending[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            data = conn.recv(65536)
            if not data:
                sel.unregister(conn)
                clients.remove(conn)
                conn.close()
                continue
            pending[conn] += data
            *lines, pending[conn] = pending[conn].split(b"\\n")
            if lines:
                got[conn] = got.get(conn, b"") + b"".join(b"<x> " + l + b"\\n" for l in lines)
        if len(got) < 2 and events:
            continue
        senders = list(got)
        for r, receiver in enumerate(clients):
            k = r % len(senders) if senders else 0
            for sender in senders[k:] + senders[:k]:
                if sender is not receiver:
                    receiver.sendall(got[sender])
        got = {}
    """
)


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "harness.bench", "--quick", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.fork
def test_bench_measures_the_baseline_and_fork_mode_side_by_side(tmp_path: Path) -> None:
    out_json, out_svg = tmp_path / "bench.json", tmp_path / "bench.svg"
    run = _bench(
        "--servers", "asyncio,fork", "--json", str(out_json), "--plot", str(out_svg), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    for heading in ("Traffic: figures", "Traffic: ratios against asyncio", "Targets"):
        assert heading in run.stdout
    assert "INVALID" not in run.stdout, run.stdout
    results = json.loads(out_json.read_text())
    assert results["baseline"] == "asyncio"
    for name in ("asyncio", "fork"):
        workloads = results["servers"][name]["workloads"]
        assert set(workloads) == {"pingpong", "duplex", "fanout10", "fanout100", "connections"}
        for result in workloads.values():
            assert result["valid"], (name, result)
        assert workloads["pingpong"]["rtt_p50_us"] > 0
        fanout = workloads["fanout10"]
        assert fanout["deliveries"] == fanout["expected"] == 10 * 9 * fanout["lines_per_client"]
        ramp = workloads["connections"]
        assert ramp["held"] == ramp["target"]
        assert all(step["pss_bytes"] > 0 for step in ramp["steps"])
    # Fork mode serves each client in its own process: the ramp must see them.
    assert results["servers"]["fork"]["workloads"]["connections"]["steps"][-1]["processes"] > 1
    assert results["ratios"]["asyncio"]["fanout10_per_s"] == 1.0
    assert results["ratios"]["fork"]["fanout10_per_s"] > 0
    assert any(t["server"] == "fork" for t in results["targets"])
    svg = out_svg.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") >= 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "chunks"])
def test_bench_marks_a_server_that_damages_lines_invalid(tmp_path: Path, mode: str) -> None:
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    out_json = tmp_path / "bench.json"
    command = f"broken={sys.executable} {relay} {{port}} {mode}"
    run = _bench(
        "--servers", "asyncio", "--server-cmd", command, "--workloads", "pingpong,duplex",
        "--json", str(out_json), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads(out_json.read_text())
    broken = results["servers"]["broken"]["workloads"]
    # Duplex sends more than one relay read holds, so chunk prefixing breaks lines there.
    assert not broken["duplex"]["valid"]
    if mode == "drop":
        assert not broken["pingpong"]["valid"]  # a dropped ping stalls the exchange
    tally = broken["duplex"]["tally"]
    assert tally["lost"] if mode == "drop" else tally["broken"]
    assert results["ratios"]["broken"]["duplex_per_s"] is None  # no ratio from bad figures
    assert all(r["valid"] for r in results["servers"]["asyncio"]["workloads"].values())
    table_row = next(r for r in run.stdout.splitlines() if r.startswith("broken "))
    assert "INVALID" in table_row


@pytest.mark.slow
def test_bench_measures_a_cluster_with_the_clients_spread_over_its_nodes(tmp_path: Path) -> None:
    from redis_fixture import RedisServer

    RedisServer.require()
    out_json = tmp_path / "bench.json"
    run = _bench(
        "--servers", "thread,cluster2", "--baseline", "thread",
        "--workloads", "pingpong,fanout10", "--json", str(out_json), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    results = json.loads(out_json.read_text())
    cluster = results["servers"]["cluster2"]
    assert cluster["nodes"] == 2
    for result in cluster["workloads"].values():
        assert result["valid"], result
    fanout = cluster["workloads"]["fanout10"]
    assert fanout["deliveries"] == fanout["expected"] == 10 * 9 * fanout["lines_per_client"]
    assert results["ratios"]["cluster2"]["fanout10_per_s"] > 0


@pytest.mark.slow
def test_bench_marks_a_relay_without_one_order_invalid(tmp_path: Path) -> None:
    relay = tmp_path / "rotating.py"
    relay.write_text(ROTATING_RELAY)
    out_json = tmp_path / "bench.json"
    run = _bench(
        "--servers", "", "--server-cmd", f"rotating={sys.executable} {relay} {{port}}",
        "--workloads", "fanout10", "--json", str(out_json), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out_json.read_text())["servers"]["rotating"]["workloads"]["fanout10"]
    assert not result["valid"]
    tally = result["tally"]
    assert tally["lost"] == 0 and tally["reordered"] == 1, tally  # FIFO held; one order not
    assert any("disagree on the order" in e for e in tally["examples"]), tally


def test_bench_refuses_an_unknown_server_in_one_line(tmp_path: Path) -> None:
    run = _bench("--servers", "nosuch", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "bench: unknown server 'nosuch' (built in: fork, thread, asyncio, select, c, ncat, "
        "cluster1, cluster2, cluster3)"
    ]
