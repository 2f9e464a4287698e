"""What a bench run shows: the figures, the ratios, the targets and the goals.

Absolute figures drift with whatever else the machine is doing; ratios measured side
by side in the same run hold. So every figure is also given as a ratio against the
baseline server (the asyncio broker unless ``--baseline`` says otherwise) and against
both references (a minimal Python select relay, and the C example relay), and the
issue's targets and goals are judged on those ratios where they are relative.

A workload whose ledger found a lost, repeated, reordered or broken line is shown as
INVALID instead of its figure, and its ratios and targets are not computed from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Results = dict[str, Any]

MIB = 1 << 20


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # column heading
    workload: str
    higher_is_better: bool
    fmt: str
    pick: Callable[[dict[str, Any]], float | None]
    ratio: bool = True  # whether a ratio against the baseline means anything


def _at(clients: int, field: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def pick(result: dict[str, Any]) -> float | None:
        for point in result.get("steps", []):
            if point["clients"] == clients:
                value = point.get(field)
                return None if value is None else float(value) / scale
        return None

    return pick


def _last(field: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def pick(result: dict[str, Any]) -> float | None:
        steps = result.get("steps") or []
        value = steps[-1].get(field) if steps else None
        return None if value is None else float(value) / scale

    return pick


def _get(field: str) -> Callable[[dict[str, Any]], float | None]:
    def pick(result: dict[str, Any]) -> float | None:
        value = result.get(field)
        return None if value is None else float(value)

    return pick


# The ramp compares servers at this client count (every server's ramp reaches it);
# figures at each server's own maximum are shown too, without ratios, since the
# maxima differ (1,000 for a process per client, 5,000 for the others).
COMPARE_AT = 1000

METRICS = (
    Metric("rtt_p50_us", "rtt p50 us", "pingpong", False, "{:.0f}", _get("rtt_p50_us")),
    Metric("rtt_p99_us", "rtt p99 us", "pingpong", False, "{:.0f}", _get("rtt_p99_us")),
    Metric("cpu_line_us", "cpu/line us", "pingpong", False, "{:.1f}", _get("cpu_per_line_us")),
    Metric("duplex_per_s", "duplex del/s", "duplex", True, "{:,.0f}", _get("deliveries_per_s")),
    Metric("fanout10_per_s", "fan10 del/s", "fanout10", True, "{:,.0f}", _get("deliveries_per_s")),
    Metric(
        "fanout100_per_s", "fan100 del/s", "fanout100", True, "{:,.0f}", _get("deliveries_per_s")
    ),
    Metric(
        "fanout10_cpu_us",
        "fan10 cpu/del us",
        "fanout10",
        False,
        "{:.3f}",
        _get("cpu_per_delivery_us"),
    ),
    Metric(
        "fanout100_cpu_us",
        "fan100 cpu/del us",
        "fanout100",
        False,
        "{:.3f}",
        _get("cpu_per_delivery_us"),
    ),
    Metric(
        "pss_per_client_mib_1000",
        "MiB/client@1k",
        "connections",
        False,
        "{:.2f}",
        _at(COMPARE_AT, "pss_per_client_bytes", MIB),
    ),
    Metric(
        "connect_s_1000",
        "connect s@1k",
        "connections",
        False,
        "{:.2f}",
        _at(COMPARE_AT, "connect_s"),
    ),
    Metric(
        "broadcast_p99_ms_1000",
        "bcast p99 ms@1k",
        "connections",
        False,
        "{:.1f}",
        _at(COMPARE_AT, "broadcast_p99_ms"),
    ),
    Metric("held", "held", "connections", True, "{:.0f}", _get("held"), ratio=False),
    Metric(
        "pss_per_client_mib",
        "MiB/client@held",
        "connections",
        False,
        "{:.2f}",
        _last("pss_per_client_bytes", MIB),
        ratio=False,
    ),
    Metric(
        "connect_s",
        "connect s@held",
        "connections",
        False,
        "{:.2f}",
        _last("connect_s"),
        ratio=False,
    ),
    Metric(
        "broadcast_p99_ms",
        "bcast p99 ms@held",
        "connections",
        False,
        "{:.1f}",
        _last("broadcast_p99_ms"),
        ratio=False,
    ),
)


def metric_values(server: dict[str, Any]) -> dict[str, float | None]:
    """Each metric of one server, None where the workload did not run or was INVALID."""
    values: dict[str, float | None] = {}
    for metric in METRICS:
        result = server.get("workloads", {}).get(metric.workload)
        values[metric.key] = metric.pick(result) if result and result.get("valid") else None
    return values


def ratios(results: Results, against: str | None = None) -> dict[str, dict[str, float | None]]:
    """Every server's metrics divided by those of ``against`` (default: the baseline),
    measured in the same run."""
    baseline = results["servers"].get(against or results["baseline"])
    if baseline is None:
        return {}
    base = metric_values(baseline)
    out: dict[str, dict[str, float | None]] = {}
    for name, server in results["servers"].items():
        mine = metric_values(server)
        out[name] = {m.key: _ratio(mine[m.key], base[m.key]) for m in METRICS if m.ratio}
    return out


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base, 3)


def targets(results: Results) -> list[dict[str, Any]]:
    """The issue's targets for this project's server, each judged met or missed."""
    servers = results["servers"]
    rel = results.get("ratios", {})
    out: list[dict[str, Any]] = []

    def judge(text: str, name: str, value: float | None, limit: float, at_least: bool) -> None:
        if name not in servers:
            return
        if value is None:
            out.append(
                {
                    "target": text,
                    "server": name,
                    "met": None,
                    "value": None,
                    "limit": limit,
                    "detail": "not measured (workload not run, INVALID, or no baseline)",
                }
            )
            return
        met = value >= limit if at_least else value <= limit
        margin = value / limit if limit else None
        out.append(
            {
                "target": text,
                "server": name,
                "met": met,
                "value": value,
                "limit": limit,
                "detail": f"{value:g} vs {'>=' if at_least else '<='} {limit:g}"
                + (f" ({margin:.2f}x the limit)" if margin is not None else ""),
            }
        )

    for name in ("fork", "thread"):
        r = rel.get(name, {})
        judge("fan-out (10) deliveries/s >= 2x baseline", name, r.get("fanout10_per_s"), 2.0, True)
        judge(
            "fan-out (100) deliveries/s >= 2x baseline", name, r.get("fanout100_per_s"), 2.0, True
        )
        judge("round-trip p50 <= 1.2x baseline", name, r.get("rtt_p50_us"), 1.2, False)
    for name, clients in (("fork", 1000), ("thread", 5000)):
        if name not in servers:
            continue
        ramp = servers[name].get("workloads", {}).get("connections")
        if ramp is None:
            continue
        if ramp.get("target", 0) < clients:
            out.append(
                {
                    "target": f"{name} holds {clients:,} clients",
                    "server": name,
                    "met": None,
                    "value": ramp.get("held"),
                    "limit": clients,
                    "detail": f"not measured: this run ramped only to {ramp.get('target')}",
                }
            )
            continue
        judge(f"{name} holds {clients:,} clients", name, ramp.get("held"), clients, True)
        pss = _at(1000, "pss_per_client_bytes")(ramp)
        if name == "fork":
            judge(
                "fork PSS per client at 1,000 <= 4 MiB",
                name,
                None if pss is None else round(pss / MIB, 3),
                4.0,
                False,
            )
        judge(
            f"{name}: one broadcast reaches all 1,000 within 100 ms p99",
            name,
            _at(1000, "broadcast_p99_ms")(ramp),
            100.0,
            False,
        )
    return out


# The goals, as (number, servers, what, metric, reference role, limit).
GOALS = (
    (1, ("fork", "thread"), "ping-pong p50", "rtt_p50_us", "python", 1.3),
    (1, ("fork", "thread"), "server CPU per relayed line", "cpu_line_us", "python", 1.5),
    (2, ("fork",), "fan-out (10) CPU per delivery", "fanout10_cpu_us", "c", 2.0),
    (2, ("fork",), "fan-out (100) CPU per delivery", "fanout100_cpu_us", "c", 2.0),
    (2, ("thread",), "fan-out (10) CPU per delivery", "fanout10_cpu_us", "c", 1.3),
    (2, ("thread",), "fan-out (100) CPU per delivery", "fanout100_cpu_us", "c", 1.3),
)


def goals(results: Results) -> list[dict[str, Any]]:
    """The issue's goals judged as ratios against the references measured in this run:
    met (PASS), missed (MISS, with by how much), or not judged and why (n/a)."""
    servers = results["servers"]
    roles = results.get("references", {})
    out: list[dict[str, Any]] = []
    for number, names, what, key, role, limit in GOALS:
        reference = roles.get(role, role)
        ref = servers.get(reference)
        for name in names:
            if name not in servers:
                continue
            text = f"{name}: {what} <= {limit:g}x {reference}"
            goal: dict[str, Any] = {
                "goal": number,
                "server": name,
                "target": text,
                "reference": reference,
                "metric": key,
                "limit": limit,
                "met": None,
                "value": None,
            }
            mine = metric_values(servers[name])[key]
            theirs = metric_values(ref)[key] if ref and not ref.get("skipped") else None
            if ref is None:
                goal["detail"] = f"n/a: {reference} was not measured in this run"
            elif ref.get("skipped"):
                goal["detail"] = f"n/a: {reference}: {ref['skipped']}"
            elif theirs is None:
                goal["detail"] = f"n/a: {reference} has no valid figure (INVALID or not run)"
            elif mine is None:
                goal["detail"] = f"n/a: {name} has no valid figure (INVALID or not run)"
            elif not theirs:
                goal["detail"] = f"n/a: {reference} used less CPU than one clock tick (run longer)"
            else:
                value = round(mine / theirs, 3)
                goal["value"], goal["met"] = value, value <= limit
                goal["detail"] = f"{value:.2f}x" + (
                    f" ({limit / value:.2f}x inside the limit)"
                    if value <= limit
                    else f" (missed by {value / limit:.2f}x)"
                )
            out.append(goal)
    return out


# --- the terminal --------------------------------------------------------------------


def _cell(metric: Metric, server: dict[str, Any]) -> str:
    result = server.get("workloads", {}).get(metric.workload)
    if result is None:
        return "-"
    if not result.get("valid"):
        return "INVALID"
    value = metric.pick(result)
    return "-" if value is None else metric.fmt.format(value)


def _grid(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(results: Results) -> str:
    """The terminal report: figures, ratios, targets, and why anything is INVALID."""
    servers = {n: s for n, s in results["servers"].items() if not s.get("skipped")}
    rel = results.get("ratios", {})
    out = []
    groups = (
        ("traffic", [m for m in METRICS if m.workload != "connections"]),
        ("connections", [m for m in METRICS if m.workload == "connections"]),
    )
    for title, group in groups:
        shown = [m for m in group if any(m.workload in s["workloads"] for s in servers.values())]
        if not shown:
            continue
        rows = [["server"] + [m.label for m in shown]]
        rows += [[name] + [_cell(m, server) for m in shown] for name, server in servers.items()]
        out.append(
            f"{title.capitalize()}: figures (loopback, this machine, this run)\n" + _grid(rows)
        )
        compared = [m for m in shown if m.ratio]
        against = results.get("ratios_against") or {results["baseline"]: rel}
        for reference, table in against.items():
            if not (table and compared):
                continue
            rows = [["server"] + [m.label for m in compared]]
            for name in servers:
                values = [table.get(name, {}).get(m.key) for m in compared]
                rows.append([name] + ["-" if v is None else f"{v:.2f}x" for v in values])
            out.append(f"{title.capitalize()}: ratios against {reference}\n" + _grid(rows))
    if not out:
        out.append("no workload ran")
    elif not rel:
        out.append(f"No ratios: the baseline {results['baseline']!r} was not measured in this run.")
    else:
        out.append("(deliveries/s and clients held: higher is better; times and memory: lower)")
    notes = [results["fd_limit_warning"]] if results.get("fd_limit_warning") else []
    for name, server in results["servers"].items():
        if server.get("skipped"):
            notes.append(f"{name}: skipped: {server['skipped']}")
            continue
        for workload, result in server.get("workloads", {}).items():
            if not result.get("valid"):
                why = result.get("error") or result.get("tally", {}).get("summary", "")
                notes.append(f"{name} {workload}: INVALID: {why}")
            elif result.get("error"):
                notes.append(f"{name} {workload}: {result['error']}")
    if notes:
        out.append("Notes\n" + "\n".join(f"  {n}" for n in notes))
    goals = results.get("targets", [])
    if goals:
        lines = []
        for goal in goals:
            verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[goal["met"]]
            lines.append(f"  {verdict} {goal['server']:7} {goal['target']}: {goal['detail']}")
        out.append("Targets\n" + "\n".join(lines))
    judged = results.get("goals", [])
    if judged:
        lines = []
        for goal in judged:
            verdict = {True: "PASS", False: "MISS", None: "n/a "}[goal["met"]]
            lines.append(f"  {verdict} goal {goal['goal']} {goal['target']}: {goal['detail']}")
        roles = results.get("references", {})
        out.append(
            f"Goals (ratios against the references: {roles.get('python')} for the single "
            f"line, {roles.get('c')} for fan-out)\n" + "\n".join(lines)
        )
    return "\n\n".join(out)
