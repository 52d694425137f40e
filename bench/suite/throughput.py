"""Section 1: enrichment throughput, side by side with the Python stream processors.

Every measurement gets its own fresh broker (the local broker slows down as it fills), the
same setup (topics, lookup tables as topics and snapshots, the workload's events round-robin
over 1 or 4 partitions; untimed) and one child process running one contender. Throughput is
input events per second until the contender's last output was flushed. The clock starts:

* raw, Quix Streams, Bytewax: at the first input record the contender saw (their start-up,
  e.g. Quix Streams' consumer-group join, is reported apart and not counted);
* alert-platform: at the first input record the Dagster run read (the run's own
  ``processing_s``), the same clock. The whole run, from launch to return (run bookkeeping,
  the table load from snapshots, reading, enriching, producing, flushing, the run index), is
  reported as its own row, "whole Dagster run", with its ratio to raw, for information.

Every contender's output is counted on its output topic and must equal the expected count
(raw: every input; the others: the engine's alert count for the workload); the first run of
each contender and layout also compares every message with the engine's (same Block Kit JSON).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from alert_platform import topics
from bench.suite import quix_env
from bench.suite.common import (
    RAW_OUTPUT,
    WARMUP_TOPIC,
    ChildError,
    Workload,
    check_content,
    client_configs,
    elapsed,
    fresh_broker,
    log,
    platform_env,
    prepare,
    run_child,
    spread,
    topic_ends,
    write_tables_json,
)

CONTENDERS = ("raw", "alert-platform", "quixstreams", "bytewax")
LABELS = {
    "raw": "raw consume + produce (ceiling)",
    "alert-platform": "alert-platform (Dagster run)",
    "quixstreams": "Quix Streams",
    "bytewax": "Bytewax",
}


def measure(
    contender: str,
    workload: Workload,
    partitions: int,
    root: Path,
    run_no: int,
    tables_json: Path,
    *,
    content: bool,
    quix_python: str | None = None,
) -> dict[str, Any]:
    """One run of one contender on a fresh broker; never raises (a failure is a FAIL row)."""
    name = f"{contender}-{partitions}p-r{run_no}"
    row: dict[str, Any] = {"contender": contender, "partitions": partitions, "run": run_no}
    started = time.perf_counter()
    try:
        with fresh_broker(root, name) as settings:
            ends = prepare(settings, workload, partitions)
            configs = client_configs(settings)
            data_dir = settings.data_dir
            output = RAW_OUTPUT if contender == "raw" else topics.SLACK_MESSAGES
            job: dict[str, Any] = {
                "bootstrap": settings.bootstrap_servers,
                "input_topic": topics.NOTIFICATIONS,
                "output_topic": output,
                "ends": {str(p): end for p, end in ends.items()},
                "inputs": workload.size,
                "tables_path": str(tables_json),
                "state_dir": str(data_dir / "state"),
                "warmup_topic": WARMUP_TOPIC,
            }
            job_path = data_dir / "job.json"
            if contender == "raw":
                job["consumer_config"] = configs["raw_consumer"]
                job["producer_config"] = configs["raw_producer"]
                result = run_child("bench.suite.raw_child", job, job_path)
            elif contender == "alert-platform":
                env = platform_env(settings, data_dir)
                result = run_child("bench.suite.platform_child", job, job_path, env=env)
            elif contender == "quixstreams":
                job["consumer_config"] = configs["framework_consumer"]
                job["producer_config"] = configs["framework_producer"]
                result = run_child(
                    "bench.suite.quix_child", job, job_path, python=quix_python or "python"
                )
            elif contender == "bytewax":
                job["consumer_config"] = configs["framework_consumer"]
                job["producer_config"] = configs["framework_producer"]
                result = run_child("bench.suite.bytewax_child", job, job_path)
            else:
                raise ValueError(f"unknown contender {contender!r}")
            row.update(result)
            row["events_s"] = workload.size / result["seconds"]
            if result.get("whole_run_s"):
                row["whole_run_events_s"] = workload.size / result["whole_run_s"]
            want = workload.size if contender == "raw" else workload.expected.alerts
            row["output"] = sum(topic_ends(settings, output).values())
            row["expected_output"] = want
            problems = []
            if row["output"] != want:
                problems.append(f"output {row['output']:,} != expected {want:,}")
            if result.get("inputs") not in (None, workload.size):
                problems.append(f"read {result['inputs']:,} of {workload.size:,} inputs")
            if content and contender != "raw" and not problems:
                check = check_content(settings, output, workload, partitions)
                row["content"] = check.describe()
                if not check.ok:
                    problems.append(f"content: {check.describe()}")
            row["problems"] = problems
    except (ChildError, RuntimeError, OSError) as exc:
        row["problems"] = [f"error: {exc}"]
    row["ok"] = not row["problems"]
    figure = f"{row['events_s']:,.0f} events/s" if "events_s" in row else "no figure"
    status = "ok" if row["ok"] else "FAIL: " + "; ".join(row["problems"])
    log(f"  {name:<28} {figure:>18}  ({elapsed(started)})  {status}")
    return row


def run_throughput(
    workload: Workload,
    contenders: list[str],
    partition_layouts: list[int],
    runs: int,
) -> dict[str, Any]:
    """Every contender on every layout, ``runs`` times, rounds interleaved."""
    quix_python = None
    quix_versions = None
    if "quixstreams" in contenders:
        try:
            quix_python = quix_env.quix_python()
            quix_versions = quix_env.versions(quix_python)
        except Exception as exc:  # reported as FAIL rows, the rest still runs
            log(f"Quix Streams environment unavailable: {exc}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        root = Path(tmp)
        tables_json = write_tables_json(workload, root / "tables.json")
        for partitions in partition_layouts:
            for run_no in range(1, runs + 1):
                for contender in contenders:
                    if contender == "quixstreams" and quix_python is None:
                        rows.append(
                            {
                                "contender": contender,
                                "partitions": partitions,
                                "run": run_no,
                                "ok": False,
                                "problems": ["Quix Streams environment could not be created"],
                            }
                        )
                        continue
                    rows.append(
                        measure(
                            contender,
                            workload,
                            partitions,
                            root,
                            run_no,
                            tables_json,
                            content=run_no == 1,
                            quix_python=quix_python,
                        )
                    )
    return {
        "runs": rows,
        "summary": summarize(rows, contenders, partition_layouts),
        "quixstreams_env": quix_versions,
    }


def summarize(
    rows: list[dict[str, Any]], contenders: list[str], partition_layouts: list[int]
) -> list[dict[str, Any]]:
    """Per contender and layout: median/min/max events/s, ratio to raw, PASS/FAIL."""
    summary = []
    for partitions in partition_layouts:
        raw_median = None
        raw_rows = [
            r for r in rows if r["contender"] == "raw" and r["partitions"] == partitions and r["ok"]
        ]
        if raw_rows:
            raw_median = spread([r["events_s"] for r in raw_rows])["median"]
        for contender in contenders:
            mine = [
                r for r in rows if r["contender"] == contender and r["partitions"] == partitions
            ]
            entry: dict[str, Any] = {
                "contender": contender,
                "label": LABELS.get(contender, contender),
                "partitions": partitions,
                "runs": len(mine),
                "ok": bool(mine) and all(r["ok"] for r in mine),
                "problems": [p for r in mine for p in r.get("problems", [])],
            }
            figures = [r["events_s"] for r in mine if "events_s" in r]
            if figures:
                entry["events_s"] = spread(figures)
                if raw_median:
                    entry["ratio_to_raw"] = entry["events_s"]["median"] / raw_median
            startups = [r["startup_s"] for r in mine if "startup_s" in r]
            if startups:
                entry["startup_s_median"] = spread(startups)["median"]
            contents = [r["content"] for r in mine if r.get("content")]
            if contents:
                entry["content"] = contents[0]
            outputs = [r.get("output") for r in mine]
            entry["output"] = outputs[0] if len(set(outputs)) == 1 else outputs
            entry["expected_output"] = next(
                (r["expected_output"] for r in mine if "expected_output" in r), None
            )
            summary.append(entry)
            whole = [r["whole_run_events_s"] for r in mine if "whole_run_events_s" in r]
            if whole:
                summary.append(
                    {
                        **entry,
                        "contender": f"{contender}-whole-run",
                        "label": f"{entry['label']}, whole run (for information)",
                        "events_s": spread(whole),
                        "ratio_to_raw": spread(whole)["median"] / raw_median
                        if raw_median
                        else None,
                    }
                )
    return summary
