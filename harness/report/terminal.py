"""The summary printed at the end: one table of checks, failures with their context."""

from __future__ import annotations

from collections.abc import Sequence

from harness.checks import FAIL, NOT_APPLICABLE, PASS
from harness.report.result import RunResult

MARKS = {PASS: "PASS", FAIL: "FAIL", NOT_APPLICABLE: "n/a"}


def where_lines(result: RunResult) -> list[str]:
    """Where the run's processes ran and the measured round trips, one line each."""
    net = result.record.network
    lines = []
    server = net.get("server")
    if isinstance(server, dict):
        lines.append(
            f"server: {server.get('host')} ({server.get('kind')}) at {net.get('connect_address')}"
        )
    cluster = net.get("cluster")
    if isinstance(cluster, dict):
        nodes = cluster.get("nodes")
        if isinstance(nodes, list):
            where = ", ".join(
                f"{n.get('host')} at {n.get('address')}:{n.get('port')}"
                for n in nodes
                if isinstance(n, dict)
            )
            lines.append(f"cluster: {len(nodes)} nodes ({where}), parties spread round-robin")
        lines.append(f"cluster store: redis-server at {cluster.get('url')} ({cluster.get('host')})")
    clients = net.get("clients")
    if isinstance(clients, list):
        hosts = sorted(
            {f"{c.get('host')} ({c.get('kind')})" for c in clients if isinstance(c, dict)}
        )
        lines.append("clients: " + ", ".join(hosts))
    rtt = net.get("round_trip_ms")
    link = " (tc netem on the links included)" if net.get("link_impairment") else ""
    lines.append(
        f"round trip: {rtt:.3f} ms between the hosts{link} (median of 1-byte TCP echoes)"
        if isinstance(rtt, float)
        else "round trip: not measured"
    )
    if "round_trip_proxy_ms" in net:
        via = net.get("round_trip_proxy_ms")
        lines.append(
            f"round trip through the impairment proxy: {via:.3f} ms (1-byte TCP echoes from "
            "a client host through a second proxy with the same spec)"
            if isinstance(via, float)
            else "round trip through the impairment proxy: not measured"
        )
    if net.get("impair"):
        lines.append(f"impairment: {net.get('impair')} by {net.get('impaired_by')}")
    if net.get("ready"):
        lines.append(f"server ready: {net.get('ready')}")
    return lines


def summary(results: Sequence[RunResult]) -> str:
    """The end-of-run text: where things ran, a row per check, then every failure."""
    if not results:
        return "no runs\n"
    out: list[str] = []
    first = results[0]
    out.append(f"scenario {first.scenario}, seed {first.record.seed}, {len(results)} run(s)")
    out.extend("  " + w for w in where_lines(first))
    out.append(f"  server command: {first.record.server_command}")
    names = [c.name for c in first.checks]
    width = max([len(n) for n in names] + [5])
    out.append("")
    out.append(f"  {'check':<{width}}  result  detail")
    out.append(f"  {'-' * width}  ------  ------")
    for name in names:
        statuses = [r.status_of(name) for r in results]
        fails = statuses.count(FAIL)
        if len(results) == 1:
            mark = MARKS[statuses[0]]
        elif fails == 0:
            mark = MARKS[statuses[0]] if NOT_APPLICABLE in statuses else "PASS"
        else:
            mark = "FLAKY" if fails < len(results) else "FAIL"
        detail = next(
            (c.detail for r in results for c in r.checks if c.name == name and c.status == FAIL),
            next((c.detail for c in first.checks if c.name == name), ""),
        )
        if len(results) > 1:
            detail = f"{len(results) - fails}/{len(results)} runs pass; {detail}"
        out.append(f"  {name:<{width}}  {mark:<6}  {detail[:150]}")
    for r in results:
        if r.cause:
            out.append(f"\ncause (run {r.iteration}): {r.cause}; the other failures follow from it")
        if r.record.notes:
            out.append(f"\nnotes (run {r.iteration}):")
            out.extend(f"  - {n}" for n in r.record.notes)
        for c in r.checks:
            if c.status == FAIL:
                out.append(f"\nFAIL {c.name} (run {r.iteration}): {c.detail}")
                if c.offender:
                    out.append(f"  first offending message: {c.offender}")
                out.extend(c.context)
        if r.server_stderr and not r.passed:
            head, tail, left_out = r.stderr_excerpt()
            ended = r.record.server_exit or r.server_exit
            out.append(f"\nserver stderr (run {r.iteration}, {ended}):")
            out.extend("  " + line for line in head)
            if left_out:
                out.append(f"  ... ({left_out} more lines: see --artifacts) ...")
            out.extend("  " + line for line in tail)
    failed = sum(1 for r in results if not r.passed)
    verdict = "PASS" if failed == 0 else ("FLAKY" if failed < len(results) else "FAIL")
    causes = sorted({r.cause for r in results if r.cause})
    because = f" ({'; '.join(causes)})" if causes else ""
    out.append(f"\n{verdict}: {len(results) - failed}/{len(results)} runs passed{because}")
    return "\n".join(out) + "\n"
