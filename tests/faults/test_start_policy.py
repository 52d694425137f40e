"""Start policy: a tail cursor with no history (first deploy, a new DAGSTER_HOME) over a topic
that already holds old events starts at the end (``latest``, the default), or at the first
record of the look-back (``ALERT_PLATFORM_START_LOOKBACK_MINUTES``), located on the local broker
by a binary search over record timestamps (it answers ``offsets_for_times`` with 0).

Against the real local stack: a private Tansu broker, the session Slack sandbox, the
platform's sensors and runs in process; counts from the sandbox.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from dagster import instance_for_test

from alert_platform import topics
from alert_platform.kafka.clients import make_producer
from alert_platform.kafka.tailing import TailCursor
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.faults.harness import (
    Burst,
    add_sandbox_users,
    alert_id_of,
    connector_failure_event,
    fault_orgs,
    lookup_records,
    posted_alert_ids,
    produce,
    read_topic,
)
from tests.faults.results import record, tally
from tests.integration.flow_helpers import FlowOptions, tick_and_run, tick_delivery

pytestmark = pytest.mark.integration

TAIL = "connector_failure_tail"


@pytest.fixture(scope="module")
def flow_options() -> FlowOptions:
    return FlowOptions(inline_delivery=True, clear_dagster_home=True)


def events_at(settings: Settings, orgs, tag: str, when: datetime) -> Burst:
    """One provisioning failure per org, event time and Kafka timestamp ``when``."""
    out = Burst()
    producer = make_producer(settings)
    stamp = int(when.timestamp() * 1000)
    for number, org in enumerate(orgs):
        connector_id = f"lcc-{tag}-{number}"
        event = connector_failure_event(org.org_id, connector_id, when=when, number=number)
        value = json.dumps(event).encode()
        producer.produce(
            topics.NOTIFICATIONS, key=org.org_id.encode(), value=value, timestamp=stamp
        )
        out.expected.add(alert_id_of(org.org_id, "env-1", connector_id))
    assert producer.flush(10) == 0
    return out


def test_fresh_cursor_starts_at_the_end_or_at_the_look_back(
    platform_env: Settings, sandbox: SandboxControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = platform_env
    orgs = fault_orgs("start", 6)
    add_sandbox_users(sandbox, orgs)
    for topic, records in lookup_records(orgs).items():
        produce(settings, topic, records)
    now = datetime.now(UTC)
    old = events_at(settings, orgs, "old", now - timedelta(hours=3))
    recent = events_at(settings, orgs, "recent", now - timedelta(minutes=20))

    # 1. The default policy: a first deploy posts nothing of what the topic already held, and
    #    everything produced after its first tick.
    monkeypatch.setenv("ALERT_PLATFORM_START_POLICY", "latest")
    monkeypatch.setenv("ALERT_PLATFORM_START_LOOKBACK_MINUTES", "0")
    with instance_for_test() as instance:
        first, runs = tick_and_run(TAIL, instance, None)
        assert runs == []
        assert TailCursor.from_json(first.cursor).next_offsets  # positioned at the end
        new = events_at(settings, orgs, "new", datetime.now(UTC))
        _second, runs = tick_and_run(TAIL, instance, first.cursor)
        assert runs and all(run.success for run in runs)
        tick_delivery(instance)
    after_latest = posted_alert_ids(sandbox)

    # 2. A new DAGSTER_HOME with a 60-minute look-back: exactly the events of the last hour
    #    (the ledger keeps the ones already posted from being posted again).
    monkeypatch.setenv("ALERT_PLATFORM_START_LOOKBACK_MINUTES", "60")
    with instance_for_test() as instance:
        _tailed, runs = tick_and_run(TAIL, instance, None)
        assert runs and all(run.success for run in runs)
        tick_delivery(instance)
    posted = posted_alert_ids(sandbox)
    from_look_back = posted[len(after_latest) :]

    expected = recent.expected | new.expected
    counts = tally(expected, posted)
    old_posted = len(old.expected & set(posted))
    dead = len(read_topic(settings, topics.ALERTS_DLQ))
    record(
        "start policy",
        trials=2,
        alerts_expected=counts["alerts_expected"],
        delivered_once=counts["delivered_once"],
        lost=counts["lost"],
        duplicated=counts["duplicated"],
        dead_lettered=dead,
        notes=(
            f"fresh cursors over {len(old.expected)} events 3 h old and {len(recent.expected)} "
            f"20 min old: latest posted {len(after_latest)} (the {len(new.expected)} produced "
            f"after its first tick), a 60 min look-back {len(from_look_back)}; "
            f"{old_posted} old alert(s) posted; located by binary search (Tansu)"
        ),
    )
    assert sorted(after_latest) == sorted(new.expected)
    assert sorted(from_look_back) == sorted(recent.expected)
    assert old_posted == 0
    assert counts["delivered_once"] == len(expected) and counts["duplicated"] == 0
    assert counts["unexpected"] == 0 and dead == 0
