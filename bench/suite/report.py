"""Targets, and the results as a console table and as Markdown (``bench/results/*.md``)."""

from __future__ import annotations

from typing import Any

from bench.suite.delivery import TARGET_RATIO
from bench.suite.latency import TARGET_P50_S, TARGET_P99_S
from bench.suite.scale import TABLE_LIMIT_MB, TABLE_LIMIT_S

MIN_RAW_RATIO = 0.5
MIN_QUIX_RATIO = 2.0

Table = tuple[str, list[str], list[list[str]], list[str]]  # title, header, rows, notes


def _n(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target the selected sections can judge: name, verdict, the numbers."""
    targets: list[dict[str, Any]] = []
    summary = (results.get("throughput") or {}).get("summary") or []
    by = {(e["contender"], e["partitions"]): e for e in summary}
    layouts = sorted({e["partitions"] for e in summary})
    platform = [by[("alert-platform", p)] for p in layouts if ("alert-platform", p) in by]
    if platform and any(("raw", p) in by for p in layouts):
        parts, ok = [], True
        for p in layouts:
            entry = by.get(("alert-platform", p))
            ratio = entry.get("ratio_to_raw") if entry else None
            good = bool(entry and entry["ok"] and ratio is not None and ratio >= MIN_RAW_RATIO)
            ok = ok and good
            parts.append(f"{p} partition(s): {_n(ratio, 2)}x")
        targets.append(
            {
                "name": f"alert-platform >= {MIN_RAW_RATIO}x raw (one process)",
                "pass": ok,
                "detail": ", ".join(parts),
            }
        )
    if platform and any(("quixstreams", p) in by for p in layouts):
        parts, ok = [], True
        for p in layouts:
            mine, quix = by.get(("alert-platform", p)), by.get(("quixstreams", p))
            ratio = None
            if mine and quix and "events_s" in mine and "events_s" in quix:
                ratio = mine["events_s"]["median"] / quix["events_s"]["median"]
            good = bool(
                mine and quix and mine["ok"] and quix["ok"] and ratio and ratio >= MIN_QUIX_RATIO
            )
            ok = ok and good
            parts.append(f"{p} partition(s): {_n(ratio, 2)}x")
        targets.append(
            {
                "name": f"alert-platform >= {MIN_QUIX_RATIO}x Quix Streams (same run)",
                "pass": ok,
                "detail": ", ".join(parts),
            }
        )
    latency = results.get("latency")
    if latency:
        figures = latency.get("latency_s") or {}
        targets.append(
            {
                "name": f"e2e latency p50 < {TARGET_P50_S:g} s, p99 < {TARGET_P99_S:g} s",
                "pass": bool(latency.get("pass")),
                "detail": (
                    f"p50 {_n(figures.get('p50'), 1)} s, p99 {_n(figures.get('p99'), 1)} s"
                    + (f"; {'; '.join(latency['problems'])}" if latency.get("problems") else "")
                ),
            }
        )
    scale = results.get("scale") or {}
    big = [row for row in scale.get("tables", []) if "pass" in row]
    if big:
        targets.append(
            {
                "name": f"1M-row tables load < {TABLE_LIMIT_S:g} s and < {TABLE_LIMIT_MB:g} MB",
                "pass": all(row["pass"] for row in big),
                "detail": ", ".join(
                    f"{row['table']} {row['load_s']:.2f} s / {row['peak_rss_mb']:.0f} MB"
                    for row in big
                ),
            }
        )
    delivery = results.get("delivery")
    if delivery:
        targets.append(
            {
                "name": f"delivery >= {TARGET_RATIO:.0%} of the rate-limit ceiling",
                "pass": bool(delivery.get("pass")),
                "detail": (
                    f"{_n(delivery.get('achieved_msgs_per_s'), 1)} of "
                    f"{_n(delivery.get('ceiling_msgs_per_s'), 0)} msg/s "
                    f"({_n((delivery.get('ratio') or 0) * 100, 1)}%)"
                ),
            }
        )
    return targets


def tables(results: dict[str, Any]) -> list[Table]:
    out: list[Table] = []
    meta = results["meta"]
    throughput = results.get("throughput")
    if throughput:
        rows = []
        for e in throughput["summary"]:
            eps = e.get("events_s") or {}
            if e["ok"]:
                check = f"ok ({e['output']:,} = expected)"
            else:
                check = "FAIL: " + "; ".join(dict.fromkeys(e["problems"]))[:160]
            rows.append(
                [
                    e["label"],
                    str(e["partitions"]),
                    _n(eps.get("median")),
                    _n(eps.get("min")),
                    _n(eps.get("max")),
                    _n(e.get("ratio_to_raw"), 2) + ("x" if e.get("ratio_to_raw") else ""),
                    check,
                ]
            )
        notes = [
            f"{meta['events']:,} events, {meta['runs']} run(s) each (median, min, max), every run "
            "on a fresh broker; one process per contender.",
            "Clock: every contender from its first input record to its last flushed output "
            "(start-up such as Quix Streams' consumer-group join or the Dagster run's table "
            "load not counted; alert-platform's figure is the run's own `processing_s`). The "
            "'whole run' rows time the Dagster run from launch to return (run bookkeeping and "
            "table load included), for information; the targets use the first clock.",
        ]
        contents = {e["label"]: e["content"] for e in throughput["summary"] if e.get("content")}
        if contents:
            notes.append(
                "Content check (first run): "
                + "; ".join(f"{label}: {text}" for label, text in contents.items())
            )
        if throughput.get("quixstreams_env"):
            notes.append(
                f"Quix Streams runs in its own venv ({throughput['quixstreams_env']}): it pins "
                "confluent-kafka<2.13, the platform needs >=2.16."
            )
        out.append(
            (
                "1. Enrichment throughput (input events/s until the last output is flushed)",
                ["contender", "partitions", "median", "min", "max", "x raw", "output check"],
                rows,
                notes,
            )
        )
    latency = results.get("latency")
    if latency:
        figures = latency.get("latency_s") or {}
        rows = [
            [
                f"{latency['delivered']}/{latency['events']}",
                _n(figures.get("p50"), 2),
                _n(figures.get("p90"), 2),
                _n(figures.get("p99"), 2),
                _n(figures.get("max"), 2),
                "PASS" if latency.get("pass") else "FAIL",
            ]
        ]
        notes = [
            f"`alert-platform dev` defaults on free ports; {latency['events']} provisioning "
            f"failures over {latency['spread_s']:.0f} s, each its own alert, to "
            "50 Slack users; sandbox rate limit raised; produce time -> sandbox receive time."
        ]
        stages = latency.get("stages")
        if stages:
            main = [
                name for name in ("sensor", "launch", "enrichment", "delivery") if name in stages
            ]
            notes.append(
                "Where the time goes (mean, share of the mean total): "
                + ", ".join(
                    f"{n} {stages[n]['mean_s']:.2f} s ({stages[n]['share']:.0%})" for n in main
                )
                + f" [{latency.get('stage_samples', 0)} alerts, {latency.get('runs', 0)} runs]"
            )
            if "queued" in stages:
                notes.append(
                    f"Launch = queued {stages['queued']['mean_s']:.2f} s (one run per source "
                    "topic at a time: mostly waiting for the previous run) + run-worker start-up "
                    f"{stages['worker_start']['mean_s']:.2f} s (mean)."
                )
        figures_run = latency.get("run_figures")
        if figures_run:
            notes.append(
                f"Enrichment runs: median {figures_run['median_run_s']:.1f} s from start to end "
                f"(inline delivery included), {figures_run['median_records_per_run']:.0f} "
                f"events each; {figures_run['median_created_to_ended_s']:.1f} s from creation "
                "to end. Run statuses: "
                + ", ".join(f"{k} {v}" for k, v in (latency.get("run_statuses") or {}).items())
                + "."
            )
        for failed in latency.get("failed_runs") or []:
            when = "after" if failed["ended_after_stop_requested"] else "before"
            notes.append(
                f"A failed enrichment run ({failed['records']} events; ended {when} dev was "
                f"asked to stop): {(failed['error'] or '').splitlines()[0][:200]}"
            )
        notes.append(f"dev stopped cleanly: {'yes' if latency.get('clean_stop') else 'NO'}")
        if latency.get("problems"):
            notes.append("Problems: " + "; ".join(latency["problems"]))
        out.append(
            (
                "2. End-to-end alert latency (seconds)",
                [
                    "alerts",
                    "p50",
                    "p90",
                    "p99",
                    "max",
                    f"p50<{TARGET_P50_S:g}, p99<{TARGET_P99_S:g}",
                ],
                rows,
                notes,
            )
        )
    scale = results.get("scale")
    if scale:
        rows = [
            [
                f"{row['table']}, {row['rows']:,} rows",
                f"{row['load_s']:.2f} s",
                f"{row['peak_rss_mb']:.0f} MB",
                ("PASS" if row["pass"] else "FAIL") if "pass" in row else "",
            ]
            for row in scale.get("tables", [])
        ]
        big = scale.get("big_tables") or {}
        summary = (results.get("throughput") or {}).get("summary") or []
        usual = next(
            (
                e["events_s"]["median"]
                for e in summary
                if e["contender"] == "alert-platform" and e["partitions"] == 1 and "events_s" in e
            ),
            None,
        )
        if big:
            eps = big.get("events_s") or {}
            versus = (
                f" ({eps['median'] / usual:.2f}x the usual tables)"
                if usual and eps.get("median")
                else ""
            )
            rows.append(
                [
                    "enrichment (Dagster run, 1 partition) with 1M-row tables",
                    f"{_n(eps.get('median'))} events/s",
                    f"tables {_n((big.get('tables_s') or {}).get('median'), 2)} s{versus}",
                    "ok" if big.get("ok") else "FAIL: " + "; ".join(big.get("problems", [])),
                ]
            )
        for workers, entry in (scale.get("workers") or {}).items():
            eps = entry.get("events_s") or {}
            problems = [p for r in entry["runs"] for p in r.get("problems", [])]
            rows.append(
                [
                    f"run_enrichment, {workers} process(es), 4 partitions",
                    f"{_n(eps.get('median'))} events/s",
                    "",
                    "ok" if entry.get("ok") else "FAIL: " + "; ".join(problems),
                ]
            )
        out.append(
            (
                "3. Scale",
                ["what", "time / throughput", "peak RSS / detail", "check"],
                rows,
                [
                    "Table loads by bench/bench_tables.py's children (fresh process, peak RSS of "
                    "the whole process). 1M-row runs: snapshots grown with filler rows.",
                    "Worker processes are released together once imported; wall time until the "
                    "later one returns.",
                ],
            )
        )
    delivery = results.get("delivery")
    if delivery:
        rows = [
            [
                str(delivery.get("alerts")),
                str(delivery.get("channels")),
                _n(delivery.get("achieved_msgs_per_s"), 1),
                _n(delivery.get("ceiling_msgs_per_s"), 0),
                f"{_n((delivery.get('ratio') or 0) * 100, 1)}%",
                f"{delivery.get('losses')} / {delivery.get('duplicates')}",
                str(delivery.get("http_429")),
            ]
        ]
        out.append(
            (
                "4. Slack delivery",
                ["alerts", "channels", "msgs/s", "ceiling", "of ceiling", "lost / dup", "429s"],
                rows,
                [
                    f"Sandbox limit {delivery.get('sandbox_limit')}; "
                    f"pacing {delivery.get('pacing')}."
                ],
            )
        )
    return out


def render_text(results: dict[str, Any]) -> str:
    lines = [_title(results), ""]
    for title, header, rows, notes in tables(results):
        lines.append(title)
        widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]
        fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines.append("  " + fmt.format(*header).rstrip())
        lines.extend("  " + fmt.format(*row).rstrip() for row in rows)
        lines.extend(f"  * {note}" for note in notes)
        lines.append("")
    lines.append("Targets")
    for target in results.get("targets", []):
        verdict = target.get("verdict") or ("PASS" if target["pass"] else "FAIL")
        lines.append(f"  [{verdict}] {target['name']}: {target['detail']}")
    lines.append("")
    lines.append(f"Total wall time: {_duration(results['meta']['wall_s'])}")
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    lines = [f"# Benchmark results\n\n{_title(results)}\n"]
    meta = results["meta"]
    lines.append(
        f"Command: `{meta['command']}`. Total wall time {_duration(meta['wall_s'])}. "
        f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, confluent-kafka "
        f"{meta['confluent_kafka']}, Bytewax {meta.get('bytewax', '—')}; load average "
        f"(1/5/15 min) {meta.get('loadavg_start')} at the start, {meta.get('loadavg_end')} at "
        "the end (a shared machine: other work adds noise).\n"
    )
    lines.append(f"Workload: {meta['workload']}\n")
    lines.append("## Targets\n")
    lines.append("| target | verdict | figures |\n|---|---|---|")
    for target in results.get("targets", []):
        verdict = target.get("verdict") or ("PASS" if target["pass"] else "**FAIL**")
        lines.append(f"| {target['name']} | {verdict} | {target['detail']} |")
    lines.append("")
    for title, header, rows, notes in tables(results):
        lines.append(f"## {title}\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines.extend(
            "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows
        )
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
        lines.append("")
    return "\n".join(lines)


def _title(results: dict[str, Any]) -> str:
    meta = results["meta"]
    return f"alert-platform benchmark suite, {meta['started_at']}, commit {meta['commit']}" + (
        " (quick)" if meta.get("quick") else ""
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s"
