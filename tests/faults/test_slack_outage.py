"""Scenario 3: Slack is down (HTTP 500), then hangs, then rate-limits in a storm.

``alert-platform dev`` works three waves of connector events while the Slack sandbox misbehaves,
one phase per wave:

1. **500s**: for ``ERROR_PHASE_S`` every Web API call answers HTTP 500 ``internal_error``;
2. **hangs**: for ``HANG_PHASE_S`` every call hangs ``HANG_S`` (longer than the client's 10 s
   timeout): half of them with the post *stored* and the answer held back (the "sent but
   unconfirmed" case the ledger and ``conversations.history`` must settle), half closing the
   connection with nothing stored;
3. **429 storm**: the next ``STORM_429`` calls answer 429 with ``Retry-After: 1``.

The outage lasts well under a minute in all (Slack outages last longer; the platform's retries
do not depend on it: delivery runs back off, give up on what they could not finish, and the
sensors re-launch them). Once it ends, every alert is in the sandbox exactly once, and the
retries show in the run metadata of the assets that delivered (``connector_failure_deliveries``,
the enrichment run's inline delivery, or ``slack_deliveries``).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from alert_platform import topics
from alert_platform.local.sandbox.control import SandboxControl
from tests.faults.harness import (
    BACKOFF_ENV,
    DevPlatform,
    burst,
    demo_orgs,
    fault_orgs,
    read_topic,
)
from tests.faults.results import record, tally

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 81124
WAVE_EVENTS = 300
ERROR_PHASE_S = 20.0
HANG_PHASE_S = 15.0
HANG_S = 12.0  # > the Slack client's 10 s timeout
STORM_429 = 150


class Outage:
    """Keeps at least ``floor`` faults of one kind pending until stopped (a time-bound outage
    out of the sandbox's count-bound faults)."""

    def __init__(self, sandbox: SandboxControl) -> None:
        self.sandbox = sandbox

    def hold(self, seconds: float, floor: int, kind: str, **fault: Any) -> None:
        deadline = time.monotonic() + seconds
        mode = fault.get("hang_mode", "respond")
        while time.monotonic() < deadline:
            pending = sum(
                f["remaining"]
                for f in self.sandbox.pending_faults()
                if f["kind"] == kind and (kind != "hang" or f["hang_mode"] == mode)
            )
            if pending < floor:
                self.sandbox.inject_faults(floor, kind, **fault)  # type: ignore[arg-type]
            time.sleep(0.2)


def retries_in_metadata(dev: DevPlatform) -> Counter[str]:
    """Slack retries by cause, summed over every materialization that delivered alerts."""
    from dagster import AssetKey

    totals: Counter[str] = Counter()
    with dev.instance() as instance:
        for key in ("connector_failure_deliveries", "slack_deliveries"):
            result = instance.fetch_materializations(AssetKey(key), limit=10_000)
            for item in result.records:
                materialization = item.asset_materialization
                if materialization is None:
                    continue
                for name, value in materialization.metadata.items():
                    if name.startswith("inline_retries_"):
                        totals[name.removeprefix("inline_retries_")] += int(value.value)
                    elif name == "retries":
                        for cause, count in dict(value.value).items():  # type: ignore[arg-type]
                            totals[cause] += int(count)
    return totals


def test_slack_outage_then_429_storm_delivers_everything_once(tmp_path: Path) -> None:
    started = time.monotonic()
    orgs = demo_orgs() + fault_orgs("out", 18)
    waves = [burst(orgs, WAVE_EVENTS, tag=f"o{w}", seed=SEED + w) for w in range(3)]
    expected = waves[0].expected | waves[1].expected | waves[2].expected
    dev = DevPlatform(tmp_path, env={BACKOFF_ENV: "1"}).start()
    try:
        sandbox = dev.sandbox
        sandbox.set_rate_limit(per_second=0)  # only the injected 429s
        dev.seed_orgs(orgs)
        outage = Outage(sandbox)

        dev.produce_events(waves[0].events)
        outage.hold(ERROR_PHASE_S, 60, "500")
        during_errors = set(dev.posted())
        dev.produce_events(waves[1].events)
        deadline = time.monotonic() + HANG_PHASE_S
        while time.monotonic() < deadline:  # alternate stored-but-unanswered and dropped posts
            outage.hold(2.0, 8, "hang", hang_seconds=HANG_S, hang_mode="respond")
            outage.hold(2.0, 8, "hang", hang_seconds=HANG_S, hang_mode="close")
        dev.produce_events(waves[2].events)
        sandbox.inject_faults(STORM_429, "429")
        outage_over = time.monotonic()

        posted = dev.wait_for_alerts(expected, timeout=300)
        recovery_s = time.monotonic() - outage_over
        time.sleep(10)  # a late duplicate would land here
        posted = dev.posted()
        stats = sandbox.stats()
        alerts_dlq = read_topic(dev.settings, topics.ALERTS_DLQ)
        delivery_dlq = read_topic(dev.settings, topics.SLACK_MESSAGES_DLQ)
        retries = retries_in_metadata(dev)
    finally:
        dev.stop()

    figures = tally(expected, posted)
    served = stats["faults_by_kind"]
    record(
        "Slack outage (500s, hangs, 429 storm)",
        trials=int(sum(served.values())),
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(alerts_dlq) + len(delivery_dlq),
        notes=(
            f"faults served {dict(served)} over {ERROR_PHASE_S + HANG_PHASE_S:.0f}s + a "
            f"{STORM_429}-call 429 storm; retries in run metadata {dict(retries)}; all "
            f"delivered {recovery_s:.0f}s after the outage; {time.monotonic() - started:.0f}s"
        ),
        retries=dict(retries),
    )
    assert served.get("500", 0) >= 40 and served.get("hang", 0) >= 8
    assert served.get("429", 0) >= 1
    assert len(during_errors & expected) == 0, "nothing gets through while every call fails"
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["unexpected"] == 0
    assert figures["delivered_once"] == figures["alerts_expected"] > 100
    assert alerts_dlq == [] and delivery_dlq == []
    # The retries are visible in the run metadata, by cause.
    assert retries["server_error"] > 0, retries
    assert retries["timeout"] > 0, retries
    assert retries["rate_limited"] > 0, retries
