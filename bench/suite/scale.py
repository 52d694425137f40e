"""Section 3: scale. Lookup tables of 100k and 1M rows, enrichment against 1M-row tables, and
two worker processes on 4 partitions.

* Table load: ``bench/bench_tables.py``'s own save and load children (each table built with
  its fixed seed and saved by one process, loaded by a fresh one that reports its load time
  and peak RSS, interpreter and pyarrow included).
* 1M-row tables: the usual setup, then both snapshots grown to 1,000,000 rows (the workload's
  rows plus filler rows no event refers to, so the expected alerts do not change) and saved
  with the offsets they had; then the alert-platform Dagster run as in section 1.
* Two workers: the workload on 4 partitions; two processes, each calling ``run_enrichment`` on
  two partitions' ranges, released together once both have imported everything; wall time
  until the later one returns. The same with one process on all four ranges, for comparison.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from alert_platform import topics
from alert_platform.tables.snapshot import load_snapshot, save_snapshot
from alert_platform.tables.specs import TABLE_SPECS
from bench import bench_tables
from bench.suite.common import (
    REPO,
    ChildError,
    Workload,
    fresh_broker,
    log,
    platform_env,
    prepare,
    run_child,
    spread,
    topic_ends,
)

TABLE_LIMIT_S = bench_tables.LIMIT_S
TABLE_LIMIT_MB = bench_tables.LIMIT_MB
BIG = 1_000_000


def table_loads(sizes: list[int]) -> list[dict[str, Any]]:
    """Load time and peak RSS per table and size (see ``bench/suite/table_loads.py``)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite.table_loads", ",".join(map(str, sizes))],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    for row in rows:
        if row["rows"] >= BIG:
            row["pass"] = row["load_s"] < TABLE_LIMIT_S and row["peak_rss_mb"] < TABLE_LIMIT_MB
        log(
            f"  {row['table']} {row['rows']:,} rows: load {row['load_s']:.2f}s, "
            f"peak RSS {row['peak_rss_mb']:.0f} MB"
        )
    return rows


def _grow_snapshots(settings, rows: int) -> dict[str, int]:
    """Grow both snapshots to ``rows`` rows with filler no event refers to."""
    rng = random.Random(7)
    sizes = {}
    for name, spec in TABLE_SPECS.items():
        path = spec.snapshot_path(settings.snapshot_dir)
        table, offsets = load_snapshot(path, spec)
        i = 0
        while len(table) < rows:
            i += 1
            if name == "csdr_assignments":
                org_id = f"org-fill-{i:07d}"
                member = rng.randrange(2_000)
                table.upsert(
                    org_id,
                    {
                        "org_id": org_id,
                        "csdr_email": f"fill.member{member:04d}@example.com",
                        "csdr_name": f"Fill Member {member}",
                        "account_name": f"Filler Account {i}",
                    },
                )
            else:
                email = f"fill.user{i:07d}@example.com"
                table.upsert(
                    email,
                    {"email": email, "slack_user_id": f"UFILL{i:07d}", "name": f"Fill User {i}"},
                )
        save_snapshot(table, offsets, path, topic=spec.topic, normalise_key=spec.normalise_key)
        sizes[name] = len(table)
    return sizes


def big_tables_enrichment(workload: Workload, root: Path, runs: int) -> dict[str, Any]:
    """alert-platform's Dagster run, 1 partition, with 1M-row lookup tables."""
    results = []
    problems = []
    for run_no in range(1, runs + 1):
        try:
            with fresh_broker(root, f"big-tables-r{run_no}") as settings:
                ends = prepare(settings, workload, 1)
                sizes = _grow_snapshots(settings, BIG)
                job = {
                    "input_topic": topics.NOTIFICATIONS,
                    "ends": {str(p): e for p, e in ends.items()},
                }
                env = platform_env(settings, settings.data_dir)
                result = run_child(
                    "bench.suite.platform_child", job, settings.data_dir / "job.json", env=env
                )
                out = sum(topic_ends(settings, topics.SLACK_MESSAGES).values())
                if out != workload.expected.alerts:
                    problems.append(f"output {out:,} != expected {workload.expected.alerts:,}")
                result.update(events_s=workload.size / result["seconds"], output=out, rows=sizes)
                results.append(result)
                log(f"  1M-row tables, run {run_no}: {result['events_s']:,.0f} events/s")
        except (ChildError, RuntimeError, OSError) as exc:
            problems.append(f"error: {exc}")
    out: dict[str, Any] = {"runs": results, "problems": problems, "ok": not problems}
    if results:
        out["events_s"] = spread([r["events_s"] for r in results])
        out["tables_s"] = spread([r["tables_s"] for r in results if r.get("tables_s") is not None])
    return out


def _split(ends: dict[int, int], workers: int) -> list[dict[str, int]]:
    parts = sorted(ends)
    share = len(parts) // workers
    return [{str(p): ends[p] for p in parts[i * share : (i + 1) * share]} for i in range(workers)]


def workers_enrichment(workload: Workload, root: Path, workers: int, run_no: int) -> dict[str, Any]:
    """``workers`` processes calling ``run_enrichment`` on 4 partitions between them."""
    row: dict[str, Any] = {"workers": workers, "run": run_no}
    try:
        with fresh_broker(root, f"workers{workers}-r{run_no}") as settings:
            ends = prepare(settings, workload, 4)
            env = {**platform_env(settings, settings.data_dir), "PYTHONPATH": str(REPO)}
            children = []
            for k, part in enumerate(_split(ends, workers)):
                job = {"mode": "workers", "input_topic": topics.NOTIFICATIONS, "ends": part}
                path = settings.data_dir / f"worker{k}.json"
                path.write_bytes(orjson.dumps(job))
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.suite.platform_child", str(path)],
                        cwd=REPO,
                        env={**os.environ, **env},
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            for child in children:
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("a worker failed to start")
            go = time.time()
            for child in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            results = []
            for child in children:
                output, _ = child.communicate(timeout=300)
                if child.returncode != 0:
                    raise RuntimeError(f"a worker exited {child.returncode}")
                results.append(orjson.loads(output.strip().splitlines()[-1]))
            wall = max(r["ended_wall"] for r in results) - go
            out = sum(topic_ends(settings, topics.SLACK_MESSAGES).values())
            inputs = sum(r["inputs"] for r in results)
            row.update(
                wall_s=wall,
                events_s=workload.size / wall,
                per_worker_s=[r["seconds"] for r in results],
                output=out,
                inputs=inputs,
            )
            problems = []
            if out != workload.expected.alerts:
                problems.append(f"output {out:,} != expected {workload.expected.alerts:,}")
            if inputs != workload.size:
                problems.append(f"read {inputs:,} of {workload.size:,}")
            row["problems"] = problems
    except (ChildError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        row["problems"] = [f"error: {exc}"]
    row["ok"] = not row["problems"]
    figure = f"{row['events_s']:,.0f} events/s" if "events_s" in row else "no figure"
    log(f"  run_enrichment, {workers} process(es) on 4 partitions: {figure}")
    return row


def run_scale(
    workload: Workload, table_sizes: list[int], big_runs: int, worker_runs: int
) -> dict[str, Any]:
    result: dict[str, Any] = {"tables": table_loads(table_sizes)}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        result["big_tables"] = big_tables_enrichment(workload, root, big_runs)
        by_workers: dict[str, Any] = {}
        for workers in (1, 2):
            rows = [
                workers_enrichment(workload, root, workers, n) for n in range(1, worker_runs + 1)
            ]
            entry: dict[str, Any] = {"runs": rows, "ok": all(r["ok"] for r in rows)}
            figures = [r["events_s"] for r in rows if "events_s" in r]
            if figures:
                entry["events_s"] = spread(figures)
            by_workers[str(workers)] = entry
        result["workers"] = by_workers
    return result
