"""Summarise a Locust run's CSV output as a markdown table, one row per endpoint.

    python loadtests/report.py PREFIX [--slo-p95-ms N]

PREFIX is what was passed to `locust --csv`: this reads PREFIX_stats.csv (and, when present,
PREFIX_stats_history.csv for the run's length and user count, and PREFIX_failures.csv for why
requests failed), writes PREFIX_report.md and prints the same markdown.

Exit status: 0 fine; 1 an endpoint's p95 is over --slo-p95-ms; 2 the input is missing or is not
Locust's CSV format (column names as written by Locust 2.47).

Locust keeps response times in buckets (exact below 100 ms, then rounded to 2 significant
digits), so the percentiles are approximate; the max is exact.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

# Locust's own row holding the totals over all endpoints.
AGGREGATED = "Aggregated"

STATS_COLUMNS = ("Type", "Name", "Request Count", "Failure Count", "Requests/s",
                 "50%", "95%", "99%", "Max Response Time")
HISTORY_COLUMNS = ("Timestamp", "User Count", "Name")
FAILURE_COLUMNS = ("Method", "Name", "Error", "Occurrences")
MAX_FAILURE_LINES = 10


class InputError(Exception):
    """The CSV files are missing or not what Locust writes."""


@dataclass(frozen=True)
class EndpointStats:
    name: str  # "POST /classify"; "All" for Locust's aggregated row
    requests: int
    failures: int
    rps: float
    p50_ms: float | None  # None: Locust wrote N/A (no requests)
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float


def read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: no column(s) {', '.join(missing)}: not a Locust 2.47 CSV?")
        return list(reader)


def ms(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value)


def parse_stats_row(row: dict[str, str]) -> EndpointStats:
    is_total = row["Name"] == AGGREGATED and not row["Type"]
    return EndpointStats(
        name="All" if is_total else f"{row['Type']} {row['Name']}".strip(),
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        rps=float(row["Requests/s"]),
        p50_ms=ms(row["50%"]),
        p95_ms=ms(row["95%"]),
        p99_ms=ms(row["99%"]),
        max_ms=float(row["Max Response Time"] or 0),
    )


def read_stats(prefix: str) -> tuple[list[EndpointStats], EndpointStats | None]:
    """Per-endpoint rows and Locust's aggregated row."""
    path = Path(f"{prefix}_stats.csv")
    if not path.is_file():
        raise InputError(f"{path} not found: run locust with --csv {prefix} first")
    endpoints: list[EndpointStats] = []
    total: EndpointStats | None = None
    for row in read_csv(path, STATS_COLUMNS):
        stats = parse_stats_row(row)
        if stats.name == "All":
            total = stats
        else:
            endpoints.append(stats)
    if not endpoints:
        raise InputError(f"{path} has no endpoint rows: the run sent no requests")
    return endpoints, total


def read_run_summary(prefix: str) -> str | None:
    """'15 s, up to 4 users' from the history file, which Locust writes every second or so."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.is_file():
        return None
    rows = [r for r in read_csv(path, HISTORY_COLUMNS) if r["Name"] == AGGREGATED]
    if not rows:
        return None
    stamps = [int(r["Timestamp"]) for r in rows]
    users = max(int(r["User Count"]) for r in rows)
    return f"{max(stamps) - min(stamps)} s, up to {users} user{'' if users == 1 else 's'}"


def read_failures(prefix: str) -> list[str]:
    path = Path(f"{prefix}_failures.csv")
    if not path.is_file():
        return []
    rows = sorted(read_csv(path, FAILURE_COLUMNS), key=lambda r: -int(r["Occurrences"]))
    return [f"{r['Occurrences']} × {r['Method']} {r['Name']}: {r['Error']}"
            for r in rows[:MAX_FAILURE_LINES]]


def fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def table_row(s: EndpointStats) -> str:
    share = f" ({100 * s.failures / s.requests:.1f}%)" if s.requests and s.failures else ""
    cells = (s.name, str(s.requests), f"{s.failures}{share}", f"{s.rps:.1f}",
             fmt_ms(s.p50_ms), fmt_ms(s.p95_ms), fmt_ms(s.p99_ms), fmt_ms(s.max_ms))
    return "| " + " | ".join(cells) + " |"


def render_table(endpoints: list[EndpointStats], total: EndpointStats | None) -> list[str]:
    lines = ["| Endpoint | Requests | Failures | Req/s | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    lines += [table_row(s) for s in endpoints]
    # With one endpoint the aggregated row would only repeat it.
    if total is not None and len(endpoints) > 1:
        lines.append(table_row(total))
    return lines


def slo_breaches(endpoints: list[EndpointStats], p95_ms: float) -> list[str]:
    breaches = []
    for s in endpoints:
        if s.p95_ms is None:
            # No latency to judge is not a pass: the SLO gate must not go green on an empty run.
            breaches.append(f"{s.name}: no p95 (no requests)")
        elif s.p95_ms > p95_ms:
            breaches.append(f"{s.name}: p95 {s.p95_ms:.0f} ms > {p95_ms:g} ms")
    return breaches


def render_report(prefix: str, table: list[str], run: str | None, failures: list[str],
                  slo: float | None, breaches: list[str]) -> str:
    lines = [f"# Load test: {Path(prefix).name}", ""]
    if run:
        lines += [f"Run: {run}.", ""]
    lines += table
    if failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    if slo is not None:
        verdict = "breached" if breaches else "met"
        lines += ["", f"SLO p95 ≤ {slo:g} ms: {verdict}."]
        lines += [f"- {b}" for b in breaches]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="the prefix given to locust --csv")
    parser.add_argument("--slo-p95-ms", type=float, default=None, metavar="N",
                        help="exit 1 if any endpoint's p95 latency is over N ms")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        endpoints, total = read_stats(args.prefix)
        run = read_run_summary(args.prefix)
        failures = read_failures(args.prefix)
    except (InputError, ValueError, KeyError) as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    breaches = [] if args.slo_p95_ms is None else slo_breaches(endpoints, args.slo_p95_ms)
    report = render_report(args.prefix, render_table(endpoints, total), run, failures,
                           args.slo_p95_ms, breaches)
    return publish(report, Path(f"{args.prefix}_report.md"), breaches)


def publish(report: str, out: Path, breaches: list[str]) -> int:
    """Write the report, print it, and make SLO breaches the exit status (1)."""
    out.write_text(report)
    print(report, end="" if report.endswith("\n") else "\n")
    print(f"written to {out}", file=sys.stderr)
    if breaches:
        print("SLO missed: " + "; ".join(breaches), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
