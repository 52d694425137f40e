"""Scenario 2: the Kafka broker dies mid-burst and comes back on the same port, empty.

``alert-platform dev`` works a first burst; once part of it is in Slack, a second part is
produced and the broker is SIGKILLed at once. It stays down for a while (sensor ticks and runs
hit the outage), then a new broker starts on the same port with its memory storage empty (as
after any restart of the local broker), the topics are recreated and the lookup data re-seeded,
and a new burst is produced. What the old broker held is gone, so the assertions are about what
the new one holds: every alert of the new burst reaches Slack exactly once, nothing is posted
twice across the restart, the tail sensors notice that the partitions now end before their
cursors and start them over by themselves (no operator action on Dagster), and what failed
during the outage failed with an error naming the broker setting.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from alert_platform import topics
from alert_platform.kafka.admin import create_topics
from alert_platform.local.demo import build_demo_data, produce_lookup_tables
from alert_platform.local.ports import port_is_free
from alert_platform.local.stack import LocalStack
from tests.faults.harness import (
    BACKOFF_ENV,
    DevPlatform,
    burst,
    demo_orgs,
    fault_orgs,
    lookup_records,
    produce,
    read_topic,
    wait_for,
)
from tests.faults.results import record, tally

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 71124
OUTAGE_S = 12
RESET_NOTE = "the topic was recreated or the broker lost its data"
HINTS = ("KAFKA_BOOTSTRAP_SERVERS", "alert-platform topics create")
# Platform exceptions in tracebacks, and the inline-delivery warning of enrichment runs.
KAFKA_ERROR = re.compile(
    r"^alert_platform\.kafka\.\S+: |inline delivery incomplete|RangeIncomplete|ProduceError"
)


def failed_run_messages(dev: DevPlatform, since: float) -> dict[str, str]:
    """run id -> failure message of every run that failed after ``since`` (epoch seconds)."""
    from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

    out = {}
    with dev.instance() as instance:
        runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        for run in runs:
            events = instance.all_logs(run.run_id)
            if not events or events[-1].timestamp < since:
                continue
            texts = [
                (e.dagster_event.event_specific_data.error.message or "")  # type: ignore[union-attr]
                if e.dagster_event is not None
                and e.dagster_event.event_type
                in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE)
                and getattr(e.dagster_event.event_specific_data, "error", None) is not None
                else ""
                for e in events
            ]
            out[run.run_id] = " | ".join(t for t in texts if t) or "(no error message)"
    return out


def test_broker_restarted_empty_mid_burst_loses_nothing_it_holds(tmp_path: Path) -> None:
    started = time.monotonic()
    orgs = demo_orgs() + fault_orgs("brk", 28)
    before = burst(orgs, 700, tag="b1", seed=SEED)
    doomed = burst(orgs, 300, tag="b2", seed=SEED + 1)  # produced just before the broker dies
    after = burst(orgs, 400, tag="b3", seed=SEED + 2)  # what the new broker holds
    dev = DevPlatform(tmp_path, env={BACKOFF_ENV: "1"}).start()
    stack = LocalStack(dev.settings)
    try:
        dev.sandbox.set_rate_limit(per_second=0)
        dev.seed_orgs(orgs)
        dev.produce_events(before.events)
        wait_for(
            lambda: len(before.expected & set(dev.posted())) >= len(before.expected) // 4,
            120,
            "a quarter of the first burst in Slack",
            alive=dev.alive,
        )
        # The broker dies right after the second part went in.
        dev.produce_events(doomed.events)
        broker = stack.process("kafka")
        pid = broker.pid
        assert pid is not None and broker.status().running
        outage_started = time.time()
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: port_is_free(dev.settings.kafka_port), 10, "the broker port", interval=0.1)
        time.sleep(OUTAGE_S)
        dev.alive()

        # A new, empty broker on the same port; topics and lookup data as `dev` would create.
        stack.up(["kafka"])
        create_topics(dev.settings)
        produce_lookup_tables(dev.settings, build_demo_data(0))
        for topic, records in lookup_records(orgs).items():
            produce(dev.settings, topic, records)
        dev.produce_events(after.events)

        posted = dev.wait_for_alerts(after.expected, timeout=240)
        time.sleep(10)  # a late duplicate would land here
        posted = dev.posted()
        alerts_dlq = read_topic(dev.settings, topics.ALERTS_DLQ)
        delivery_dlq = read_topic(dev.settings, topics.SLACK_MESSAGES_DLQ)
        failures = failed_run_messages(dev, outage_started)
        log = (dev.data_dir / "logs" / "dagster.log").read_text(errors="replace")
    finally:
        dev.stop()
        stack.down(["kafka"])

    # What the new broker holds: all of it, once. Across the restart: nothing twice.
    figures = tally(after.expected, posted)
    lost_with_broker = (before.expected | doomed.expected) - set(posted)
    everything = tally(before.expected | doomed.expected | after.expected, posted)
    reset_notes = [line for line in log.splitlines() if RESET_NOTE in line]
    # Every platform error Dagster logged (sensor ticks, runs, inline-delivery warnings).
    kafka_errors = [line for line in log.splitlines() if KAFKA_ERROR.search(line)]
    record(
        "broker loss (SIGKILL + empty restart)",
        trials=1,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=everything["duplicated"],
        dead_lettered=len(alerts_dlq) + len(delivery_dlq),
        notes=(
            f"broker down {OUTAGE_S}s mid-burst; counted: the {len(after.events)} events produced "
            f"after the restart; {len(lost_with_broker)} of "
            f"{len(before.expected | doomed.expected)} earlier alerts went with the broker's "
            f"memory, none posted twice; {len(failures)} run(s) failed during the outage; "
            f"{len(kafka_errors)} Kafka error(s) logged, each naming KAFKA_BOOTSTRAP_SERVERS or "
            f"`topics create`; {len(reset_notes)} cursor reset(s); "
            f"{time.monotonic() - started:.0f}s"
        ),
    )
    assert figures["lost"] == 0
    assert figures["delivered_once"] == figures["alerts_expected"] > 50
    assert everything["duplicated"] == 0
    assert everything["unexpected"] == 0
    assert alerts_dlq == [] and delivery_dlq == []
    # The sensors noticed the recreated partitions and started them over, by themselves.
    assert any(topics.NOTIFICATIONS in line for line in reset_notes), reset_notes
    # What failed during the outage said what to check: the broker setting, or the topics.
    assert kafka_errors, "the outage left no trace in the log"
    for line in kafka_errors + list(failures.values()):
        assert any(hint in line for hint in HINTS), line
