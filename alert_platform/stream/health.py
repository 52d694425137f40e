"""How a stream worker's health is told: flat figures for observations and logs, and the lag
and freshness verdicts the asset checks report."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from alert_platform.stream.loop import StreamHealth


def figures(health: StreamHealth) -> dict[str, Any]:
    """Flat figures of one report (observation metadata)."""
    lag = health.lag()
    return {
        "stream": health.stream,
        "group": health.group,
        "member": health.member,
        "partitions": sorted(health.partitions),
        "events_per_s": round(health.events_per_s, 3),
        "outputs_per_min": round(health.outputs_per_min, 3),
        "records": health.records,
        "outputs": health.outputs,
        "batches": health.batches,
        "failures": health.failures,
        "lag_records": sum(lag.values()),
        "lag_by_partition": {str(p): n for p, n in sorted(lag.items())},
        "last_event_ms": health.last_event_ms,
        "last_error": health.last_error,
    }


def describe(health: StreamHealth) -> str:
    """One log line."""
    f = figures(health)
    return (
        f"stream {f['stream']}: {f['events_per_s']} events/s, {f['outputs_per_min']} out/min, "
        f"lag {f['lag_records']} record(s) {f['lag_by_partition']}, partitions {f['partitions']}"
        f"{', failures ' + str(f['failures']) if f['failures'] else ''}"
    )


@dataclass(frozen=True)
class Verdict:
    """An asset check's outcome: passed, and why."""

    passed: bool
    description: str


def lag_verdict(lag_s: float | None, bound_s: float) -> Verdict:
    """The stream's oldest uncommitted record is at most ``bound_s`` old (``None``: nothing
    uncommitted)."""
    if lag_s is None or lag_s <= bound_s:
        shown = "no uncommitted record" if lag_s is None else f"{lag_s:.1f} s"
        return Verdict(True, f"stream lag {shown} (bound {bound_s:g} s)")
    return Verdict(
        False, f"stream lag {lag_s:.1f} s exceeds {bound_s:g} s: catch-up runs take over"
    )


def freshness_verdict(
    last_report_at: float | None, max_silence_s: float, now: float | None = None
) -> Verdict:
    """A worker reported within ``max_silence_s`` (it is alive)."""
    now = time.time() if now is None else now
    if last_report_at is None:
        return Verdict(False, "no stream worker has reported yet")
    silence = now - last_report_at
    if silence <= max_silence_s:
        return Verdict(True, f"last worker report {silence:.0f} s ago")
    return Verdict(False, f"no worker report for {silence:.0f} s (more than {max_silence_s:g} s)")
