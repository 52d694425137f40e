"""Stream-mode benchmark (issue 14's targets), with the batch path measured in the same run.

    .venv/bin/python -m bench.bench_stream [--trickle-seconds 120] [--trickle-rate 0.5]
        [--idle-seconds 10] [--burst-alerts 2000] [--burst-users 200] [--events 200000]
        [--runs 1] [--batch-latency run|skip] [--batch-events 30] [--batch-spread 60]
        [--only trickle,burst,throughput,batch] [--results-dir DIR] [--name stream] [--strict]

Sections (bench/suite/stream_latency.py, stream_throughput.py):

* trickle: ``alert-platform stream --local`` (a subprocess, every stream) against a local stack
  of its own; 0.5 events/s for 120 s, each event its own org and Slack user; latency produce ->
  sandbox message ``ts`` p50/p99, and the CPU of the worker process and of the broker process
  over the window (``/proc/PID/stat`` utime + stime, all threads; the sandbox, Slack's
  stand-in, is shown apart and not counted);
* burst: 2,000 alerts to 200 users, the sandbox's limit and the platform's pacing raised, a
  fresh worker process: p99 latency;
* throughput: one enrichment worker (child process) against ``run_enrichment`` over the same
  ranges, and two workers in one group against one, on the 4-partition notifications topic;
* batch: the batch path's latency, measured now: ``alert-platform dev`` with
  ``ALERT_PLATFORM_MODE=batch`` (sensor tick + Dagster run, bench/suite/latency.py) for a
  shorter window (30 events over 60 s); ``--batch-latency skip`` leaves it out.

Prints a table of figure / target / met, writes ``NAME.json`` and ``NAME.md`` to the results
dir (default ``bench/results``, name ``stream``). Exit 1 when a check failed (an alert lost or
posted twice, wrong counts, a worker that did not drain); with ``--strict`` 2 when a target is
missed.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.suite.common import REPO, build_workload, log

SECTIONS = ("trickle", "burst", "throughput", "dev", "batch")
TARGETS = {
    "trickle_p50_s": 0.100,
    "trickle_p99_s": 0.500,
    "platform_cores": 0.2,
    "runs_per_hour": 10.0,
    "burst_p99_s": 3.0,
    "stream_vs_batch": 1.0,
    "two_vs_one": 1.7,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_stream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trickle-seconds", type=float, default=120.0)
    parser.add_argument("--trickle-rate", type=float, default=0.5, help="events/s")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="idle CPU sample before the trickle (0: none)",
    )
    parser.add_argument("--burst-alerts", type=int, default=2000)
    parser.add_argument("--burst-users", type=int, default=200)
    parser.add_argument("--events", type=int, default=200_000, help="throughput workload")
    parser.add_argument("--runs", type=int, default=1, help="throughput runs per contender")
    parser.add_argument("--dev-events", type=int, default=60, help="dev section: events")
    parser.add_argument("--dev-spread", type=float, default=120.0, help="dev section: seconds")
    parser.add_argument("--batch-latency", choices=("run", "skip"), default="run")
    parser.add_argument("--batch-events", type=int, default=30)
    parser.add_argument("--batch-spread", type=float, default=60.0, help="seconds")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="stream")
    parser.add_argument("--strict", action="store_true", help="exit 2 when a target is missed")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.batch_latency == "skip":
        chosen = [s for s in chosen if s != "batch"]
    args.sections = [s for s in SECTIONS if s in chosen]
    return args


def run_sections(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        root = Path(tmp)
        if {"trickle", "burst"} & set(args.sections):
            from bench.suite.stream_latency import burst, local_stack, trickle

            with local_stack(root / "stack") as stack:
                if "trickle" in args.sections:
                    log("1. trickle: stream latency and CPU")
                    results["trickle"] = trickle(
                        stack, args.trickle_rate, args.trickle_seconds, args.idle_seconds
                    )
                if "burst" in args.sections:
                    log("2. burst")
                    results["burst"] = burst(stack, args.burst_alerts, args.burst_users)
        if "throughput" in args.sections:
            from bench.suite.stream_throughput import run_stream_throughput

            log(f"3. throughput: building the workload ({args.events:,} events)")
            workload = build_workload(args.events)
            gc.collect()
            results["throughput"] = run_stream_throughput(workload, root / "tp", args.runs)
            del workload
            gc.collect()
    keep = ("mode", "events", "spread_s", "delivered", "latency_s", "stages", "runs",
            "run_statuses", "problems", "clean_stop", "startup_s", "platform_cores", "window_s",
            "window_runs", "window_runs_by_job")  # fmt: skip
    if "dev" in args.sections:
        from bench.suite.latency import run_latency

        log("4a. stream path under Dagster: alert-platform dev (stream mode), whole platform")
        dev = run_latency(args.dev_events, args.dev_spread, mode="stream")
        results["dev"] = {k: dev[k] for k in keep if k in dev}
    if "batch" in args.sections:
        from bench.suite.latency import run_latency

        log("4. batch path latency: alert-platform dev, ALERT_PLATFORM_MODE=batch")
        batch = run_latency(args.batch_events, args.batch_spread, mode="batch")
        results["batch"] = {k: batch[k] for k in keep if k in batch}
    return results


def _row(
    figure: str,
    value: float | None,
    target: float | None,
    *,
    at_most: bool,
    unit: str = "",
    note: str = "",
) -> dict[str, Any]:
    met = None
    if target is not None and value is not None:
        met = value <= target if at_most else value >= target
    return {
        "figure": figure,
        "value": value,
        "target": target,
        "at_most": at_most,
        "unit": unit,
        "met": met,
        "note": note,
    }


def figure_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    t = results.get("trickle")
    batch = (results.get("batch") or {}).get("latency_s") or {}
    if t:
        lat = t.get("latency_s") or {}
        rows.append(
            _row(
                "trickle p50 produce -> Slack, stream",
                lat.get("p50"),
                TARGETS["trickle_p50_s"],
                at_most=True,
                unit="s",
            )
        )
        rows.append(
            _row(
                "trickle p99 produce -> Slack, stream",
                lat.get("p99"),
                TARGETS["trickle_p99_s"],
                at_most=True,
                unit="s",
            )
        )
    if batch:
        n = results["batch"].get("events")
        note = f"dev in batch mode, {n} events over {results['batch'].get('spread_s'):.0f} s"
        stages = results["batch"].get("stages") or {}
        if stages:
            parts = ", ".join(
                f"{k} {stages[k]['mean_s']:.1f} s"
                for k in ("sensor", "launch", "enrichment", "delivery")
                if k in stages
            )
            note += f"; mean {parts}"
        rows.append(
            _row(
                "batch path p50 (same run)",
                batch.get("p50"),
                None,
                at_most=True,
                unit="s",
                note=note,
            )
        )
        rows.append(
            _row(
                "batch path p99 (same run)",
                batch.get("p99"),
                None,
                at_most=True,
                unit="s",
                note=note,
            )
        )
    if t and t.get("cores"):
        cores = t["cores"]
        note = (
            f"worker {cores['stream']:.3f} + broker {cores['broker']:.3f}; sandbox "
            f"{cores['sandbox']:.3f} not counted"
        )
        idle = t.get("idle_cores")
        if idle:
            note += f"; idle: worker {idle['stream']:.3f}, broker {idle['broker']:.3f}"
        rows.append(
            _row(
                "trickle CPU, stream worker + broker (cores)",
                cores["platform"],
                TARGETS["platform_cores"],
                at_most=True,
                note=note,
            )
        )
    dev = results.get("dev")
    if dev and dev.get("latency_s"):
        lat = dev["latency_s"]
        note = (
            f"alert-platform dev, stream mode, {dev.get('events')} events over "
            f"{dev.get('spread_s'):.0f} s"
        )
        rows.append(_row("dev (Dagster-supervised workers) p50", lat.get("p50"),
                         TARGETS["trickle_p50_s"], at_most=True, unit="s", note=note))  # fmt: skip
        rows.append(_row("dev (Dagster-supervised workers) p99", lat.get("p99"),
                         TARGETS["trickle_p99_s"], at_most=True, unit="s", note=note))  # fmt: skip
    for name, section in (("stream", dev), ("batch", results.get("batch"))):
        if section and section.get("platform_cores") is not None:
            rows.append(_row(
                f"trickle CPU, whole platform, {name} mode (cores)", section["platform_cores"],
                TARGETS["platform_cores"] if name == "stream" else None, at_most=True,
                note="every process alert-platform dev started (Dagster webserver, daemon, code "
                f"server, runs, workers, broker, emulator, sandbox), {section.get('window_s')} s",
            ))  # fmt: skip
        if section and section.get("window_runs") is not None and section.get("window_s"):
            per_hour = section["window_runs"] * 3600 / section["window_s"]
            rows.append(_row(
                f"Dagster runs per hour at that trickle, {name} mode", round(per_hour, 1),
                TARGETS["runs_per_hour"] if name == "stream" else None, at_most=True,
                note=f"{section['window_runs']} run(s) created in the {section['window_s']} s "
                f"window: {section.get('window_runs_by_job') or {}}",
            ))  # fmt: skip
    b = results.get("burst")
    if b:
        lat = b.get("latency_s") or {}
        note = (
            f"{b['alerts']} alerts to {b['users']} users; p50 {lat.get('p50', float('nan')):.2f} s"
        )
        rows.append(
            _row(
                "burst p99 produce -> Slack",
                lat.get("p99"),
                TARGETS["burst_p99_s"],
                at_most=True,
                unit="s",
                note=note,
            )
        )
    tp = results.get("throughput")
    if tp:
        medians = tp.get("events_s", {})

        def med(key: str) -> str:
            return f"{medians[key]['median']:,.0f}" if key in medians else "-"

        rows.append(
            _row(
                "1 worker / batch run (events/s)",
                tp.get("stream_vs_batch"),
                TARGETS["stream_vs_batch"],
                at_most=False,
                unit="x",
                note=f"{med('stream_1')} vs {med('batch')} events/s, "
                f"{tp['events']:,} events, 4 partitions",
            )
        )
        rows.append(
            _row(
                "2 workers / 1 worker (events/s)",
                tp.get("two_vs_one"),
                TARGETS["two_vs_one"],
                at_most=False,
                unit="x",
                note=f"{med('stream_2')} vs {med('stream_1')} events/s; {os.cpu_count()} CPUs",
            )
        )
    return rows


def checks(results: dict[str, Any]) -> list[str]:
    """What went wrong beyond missed targets (empty: every check held)."""
    problems = []
    for name in ("trickle", "burst"):
        section = results.get(name)
        if not section:
            continue
        if not section.get("exactly_once"):
            problems.append(
                f"{name}: {section.get('missing')} missing, "
                f"{section.get('duplicated')} posted twice"
            )
        if not section.get("stop", {}).get("drained"):
            problems.append(f"{name}: the worker did not drain: {section.get('stop')}")
    tp = results.get("throughput")
    if tp:
        problems += [
            f"throughput {r['contender']} x{r['workers']}: {p}"
            for r in tp["runs"]
            for p in r["problems"]
        ]
    batch = results.get("batch")
    if batch:
        problems += [f"batch latency: {p}" for p in batch.get("problems", [])]
    return problems


def _fmt(row: dict[str, Any]) -> tuple[str, str, str]:
    value, target, unit = row["value"], row["target"], row["unit"]
    shown = (
        "-"
        if value is None
        else (
            f"{value * 1000:.0f} ms"
            if unit == "s" and value < 1
            else f"{value:.3g}{' ' + unit if unit else ''}"
        )
    )
    if target is None:
        return shown, "(for comparison)", ""
    sign = "<=" if row["at_most"] else ">="
    wanted = (
        f"{sign} {target * 1000:.0f} ms"
        if unit == "s" and target < 1
        else (f"{sign} {target:g}{' ' + unit if unit else ''}")
    )
    return shown, wanted, "yes" if row["met"] else "NO"


def render(results: dict[str, Any], markdown: bool) -> str:
    meta = results["meta"]
    lines = []
    if markdown:
        lines += [
            "# Stream-mode benchmark",
            "",
            f"`{meta['command']}`, {meta['started_at']}, commit {meta['commit']}, "
            f"{meta['cpus']} CPUs, wall {meta['wall_s']:.0f} s, load average "
            f"{meta['loadavg_start']} -> {meta['loadavg_end']}",
            "",
            "| figure | value | target | met | detail |",
            "|---|---|---|---|---|",
        ]
        for row in results["figures"]:
            shown, wanted, met = _fmt(row)
            lines.append(f"| {row['figure']} | {shown} | {wanted} | {met} | {row['note']} |")
    else:
        lines.append(f"stream-mode benchmark ({meta['started_at']}, commit {meta['commit']})")
        width = max((len(r["figure"]) for r in results["figures"]), default=10)
        lines.append(f"{'figure':<{width}}  {'value':>10}  {'target':>12}  met")
        for row in results["figures"]:
            shown, wanted, met = _fmt(row)
            lines.append(f"{row['figure']:<{width}}  {shown:>10}  {wanted:>12}  {met}")
            if row["note"]:
                lines.append(f"{'':<{width}}    {row['note']}")
    lines.append("")
    for name in ("trickle", "burst"):
        section = results.get(name)
        if section:
            lines.append(
                f"- {name}: {section['delivered']}/{section['sent']} delivered, "
                f"{section['missing']} missing, {section['duplicated']} posted twice "
                f"(exactly once: {'yes' if section['exactly_once'] else 'NO'}); worker "
                f"drained in {section['stop']['drain_s']} s"
            )
    lines.append(
        "- CPU: the `alert-platform stream --local` process (all streams, all threads) "
        "and the broker process, /proc utime+stime over the trickle window; latency "
        "from the produce time to the sandbox message ts."
    )
    if "batch" in results:
        lines.append(
            "- batch path: `alert-platform dev` with ALERT_PLATFORM_MODE=batch, "
            "measured in this run (bench/suite/latency.py)"
        )
    problems = results["problems"]
    lines.append(f"- checks: {'all held' if not problems else '; '.join(problems)}")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    import subprocess

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return (head or "unknown") + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "command": " ".join(
            ["python -m bench.bench_stream", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "sections": args.sections,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    results: dict[str, Any] = {"meta": meta, **run_sections(args)}
    meta["wall_s"] = time.perf_counter() - started
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["figures"] = figure_rows(results)
    results["problems"] = checks(results)
    print(render(results, markdown=False), flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{args.name}.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    (args.results_dir / f"{args.name}.md").write_text(render(results, markdown=True))
    log(f"wrote {json_path} and {args.name}.md")
    if results["problems"]:
        return 1
    if args.strict and not all(r["met"] for r in results["figures"] if r["target"] is not None):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
