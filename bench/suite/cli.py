"""``python -m bench``: the benchmark suite, unattended.

    python -m bench [--quick] [--only raw,alert-platform,quixstreams,bytewax,latency,scale,
        delivery] [--events N] [--runs N] [--partitions 1,4] [--results-dir DIR] [--name NAME]
        [--strict]

Sections (all by default; ``--only`` picks some):

1. enrichment throughput of ``raw`` (the consume + produce ceiling), ``alert-platform`` (its
   Dagster run), ``quixstreams`` and ``bytewax`` on 1 and 4 partitions (bench/suite/throughput.py);
2. ``latency``: end-to-end alert latency under `alert-platform dev` (bench/suite/latency.py);
3. ``scale``: 100k / 1M-row tables, enrichment with 1M-row tables, two worker processes
   (bench/suite/scale.py);
4. ``delivery``: msgs/s against the Slack rate-limit ceiling (bench/suite/delivery.py).

One fixed-seed workload for everything (500,000 events; ``--quick``: 20,000, one run, short
latency and delivery runs, 100k-row scale). Prints a table, writes ``NAME.json`` and
``NAME.md`` to the results dir (default ``bench/results``, name ``latest``; ``quick`` with
``--quick``). Exit status 1 when an output check failed (wrong counts, differing messages, a
contender that crashed, dev not stopping cleanly); a missed target is printed as FAIL and, with
``--strict``, exits 2.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.suite.common import REPO, build_workload, log

THROUGHPUT = ("raw", "alert-platform", "quixstreams", "bytewax")
SECTIONS = (*THROUGHPUT, "latency", "scale", "delivery")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="alert-platform's benchmark suite"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--events", type=int, help="workload size (default 500000; quick 20000)")
    parser.add_argument("--runs", type=int, help="runs per contender and layout (3; quick 1)")
    parser.add_argument("--partitions", default="1,4", help="input layouts (default 1,4)")
    parser.add_argument("--latency-events", type=int, help="default 200; quick 20")
    parser.add_argument("--latency-spread", type=float, help="seconds (default 120; quick 20)")
    parser.add_argument("--delivery-alerts", type=int, help="default 2000; quick 200")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", help="results file name (default latest; quick: quick)")
    parser.add_argument(
        "--strict", action="store_true", help="exit 2 when a target is missed (full runs)"
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    quick = args.quick
    args.events = args.events or (20_000 if quick else 500_000)
    args.runs = args.runs or (1 if quick else 3)
    args.layouts = [int(p) for p in args.partitions.split(",") if p.strip()]
    args.latency_events = args.latency_events or (20 if quick else 200)
    args.latency_spread = args.latency_spread or (20.0 if quick else 120.0)
    args.delivery_alerts = args.delivery_alerts or (200 if quick else 2000)
    args.name = args.name or ("quick" if quick else "latest")
    return args


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "not installed"


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(
                ["python -m bench", shlex.join(sys.argv[1:] if argv is None else argv)]
            ).strip(),
            "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(),
            "quick": args.quick,
            "sections": args.sections,
            "events": args.events,
            "runs": args.runs,
            "partitions": args.layouts,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "confluent_kafka": _version("confluent-kafka"),
            "bytewax": _version("bytewax"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
    }
    contenders = [s for s in args.sections if s in THROUGHPUT]
    workload = None
    if contenders or "scale" in args.sections:
        log(f"building the workload ({args.events:,} events) ...")
        workload = build_workload(args.events)
        gc.collect()
        gc.freeze()  # long-lived: keep it out of later collections
        expected = workload.expected
        results["meta"]["workload"] = (
            f"{workload.size:,} notification events ({workload.avg_bytes:.0f} bytes avg, fixed "
            f"seed), {len(workload.tables['csdr_assignments']):,} org assignments (of 50,000 "
            f"orgs), {len(workload.tables['slack_users']):,} Slack-user rows (of 20,000 people; "
            f"85% with a Slack id); expected {expected.alerts:,} alerts "
            f"({expected.routed_to_fallback:,} to the fallback channel), "
            f"{expected.unmatched:,} unmatched, {expected.dead_lettered:,} dead letters"
        )
        log(results["meta"]["workload"])
    else:
        results["meta"]["workload"] = "(no workload: latency/delivery only)"

    if contenders:
        from bench.suite.throughput import run_throughput

        log(f"1. enrichment throughput: {', '.join(contenders)} on {args.layouts} partition(s)")
        results["throughput"] = run_throughput(workload, contenders, args.layouts, args.runs)
    if "latency" in args.sections:
        from bench.suite.latency import run_latency

        log("2. end-to-end latency under alert-platform dev")
        results["latency"] = run_latency(args.latency_events, args.latency_spread, mode="batch")
    if "scale" in args.sections:
        from bench.suite.scale import run_scale

        log("3. scale")
        sizes = [100_000] if args.quick else [100_000, 1_000_000]
        results["scale"] = run_scale(workload, sizes, big_runs=args.runs, worker_runs=args.runs)
    if "delivery" in args.sections:
        from bench.suite.delivery import run_delivery

        log(f"4. Slack delivery, {args.delivery_alerts:,} alerts over 50 channels")
        results["delivery"] = run_delivery(args.delivery_alerts)

    from bench.suite.report import evaluate_targets, render_markdown, render_text

    targets = evaluate_targets(results)
    if args.quick:
        for target in targets:
            target["verdict"] = "n/a (quick)"
    results["targets"] = targets
    results["meta"]["wall_s"] = time.perf_counter() - started
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["checks_ok"] = _checks_ok(results)

    text = render_text(results)
    print(text, flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{args.name}.json"
    md_path = args.results_dir / f"{args.name}.md"
    json_path.write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    md_path.write_text(render_markdown(results))
    log(f"wrote {json_path} and {md_path}")
    if not results["checks_ok"]:
        return 1
    if args.strict and not args.quick and not all(t["pass"] for t in targets):
        return 2
    return 0


def _checks_ok(results: dict[str, Any]) -> bool:
    """Every measurement produced what it had to (counts, content, clean stops)."""
    ok = True
    throughput = results.get("throughput")
    if throughput:
        ok = ok and all(row["ok"] for row in throughput["runs"])
    latency = results.get("latency")
    if latency:
        ok = ok and not latency.get("problems")
    scale = results.get("scale")
    if scale:
        ok = ok and scale["big_tables"]["ok"]
        ok = ok and all(entry["ok"] for entry in scale["workers"].values())
    delivery = results.get("delivery")
    if delivery:
        ok = ok and not delivery.get("problems")
    return ok
