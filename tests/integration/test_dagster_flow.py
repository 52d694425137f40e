"""The whole platform through Dagster, in process: tail sensors tick, their runs execute, and
alerts travel topic -> tables -> slack-messages -> Slack sandbox exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.local.demo import build_demo_data, produce_events, produce_lookup_tables
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.integration.flow_helpers import (
    alert_ids_on_topic,
    connector_failure_alert_id,
    connector_status_event,
    expected_alert_ids,
    latest_materialization_metadata,
    posted_alert_ids,
    read_topic,
    repo,
    tick_and_run,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("inline", [True, False], ids=["inline-delivery", "sensor-delivery"])
def test_events_become_alerts_then_slack_posts_exactly_once(
    platform_env: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    inline: bool,
) -> None:
    settings = platform_env
    monkeypatch.setenv("ALERT_PLATFORM_INLINE_DELIVERY", "true" if inline else "false")
    before = set(alert_ids_on_topic(settings))
    demo = build_demo_data(event_count=40, seed=11 if inline else 12)
    produce_lookup_tables(settings, demo)
    produce_events(settings, demo.events)
    producer = make_producer(settings)
    producer.produce(topics.NOTIFICATIONS, key=b"org-0001", value=b'{"Provisioning": ')
    producer.flush(10)
    expected = expected_alert_ids(demo, demo.events) - before
    assert len(expected) >= 5, "the demo seed should yield several alerts"

    # Enrichment: one tick launches one run for every partition with new records.
    result, runs = tick_and_run("connector_failure_tail", instance, None)
    assert len(runs) == 1 and runs[0].success
    request = result.run_requests[0]
    assert request.tags["alert-platform/source"] == topics.NOTIFICATIONS
    ranges = request.run_config["ops"]["connector_failure_alerts"]["config"]["ranges"]
    assert len({r["partition"] for r in ranges}) == len(ranges) > 1
    assert set(alert_ids_on_topic(settings)) - before == expected
    dlq = read_topic(settings, topics.ALERTS_DLQ)
    assert (b"org-0001", b'{"Provisioning": ') in [(key, value) for key, value, _h in dlq]
    bad = next(h for key, value, h in dlq if value == b'{"Provisioning": ')
    assert bad["error"].startswith(b"value is not valid JSON")

    # Run metadata is recorded on the asset's materializations.
    metadata = latest_materialization_metadata(instance, "connector_failure_alerts")
    assert metadata["mode"] == "live"
    assert {"read", "filtered_out", "unmatched", "routed_to_fallback", "alerts"} <= set(metadata)
    assert metadata.get("inline_delivery") == ("done" if inline else None)

    # A second tick with nothing new launches nothing.
    again, reruns = tick_and_run("connector_failure_tail", instance, result.cursor)
    assert reruns == [] and again.skip_reason is not None

    # The delivery sensor settles one tick, then delivers what is not delivered yet.
    first, none_yet = tick_and_run("slack_delivery_tail", instance, None)
    assert none_yet == []
    _, delivery_runs = tick_and_run("slack_delivery_tail", instance, first.cursor)
    if inline:
        assert delivery_runs == [], "ranges delivered inline need no delivery run"
    else:
        assert len(delivery_runs) == 1 and delivery_runs[0].success
    assert posted_alert_ids(sandbox) == sorted(expected)
    responses = [json.loads(v) for _k, v, _h in read_topic(settings, topics.SLACK_RESPONSES)]
    assert expected <= {r["alert_id"] for r in responses if r["ok"]}

    # Replaying every range of slack-messages (a re-run, or a backfill) posts nothing twice.
    consumer = make_consumer(settings)
    ends = probe_end_offsets(consumer, topics.SLACK_MESSAGES)
    consumer.close()
    everything = [OffsetRange(topics.SLACK_MESSAGES, p, 0, e).as_dict() for p, e in ends.items()]
    _defs, repository = repo()
    job = repository.get_job("slack_delivery_job")
    config = {"ops": {"slack_deliveries": {"config": {"ranges": everything}}}}
    assert job.execute_in_process(run_config=config, instance=instance).success
    assert len(sandbox.messages()) == len(expected)


def test_late_assignment_is_joined_by_the_next_run(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance, tmp_path: Path
) -> None:
    """A table update written before an event is seen by that event's join (catch-up)."""
    settings = platform_env
    first, _ = tick_and_run("connector_failure_tail", instance, None)
    org_id = "org-late-0001"
    producer = make_producer(settings)
    row = {"org_id": org_id, "csdr_email": "Ada.Lovelace@example.com", "csdr_name": "Ada",
           "account_name": "Late Corp"}  # fmt: skip
    producer.produce(topics.CSDR_ASSIGNMENT, key=org_id.encode(), value=json.dumps(row).encode())
    producer.flush(10)
    event, labels = connector_status_event(org_id, 1)
    produce_events(settings, [(org_id, event)])

    _, runs = tick_and_run("connector_failure_tail", instance, first.cursor)
    assert runs and all(run.success for run in runs)
    alert_id = connector_failure_alert_id(org_id, labels)
    values = [json.loads(v) for _k, v, _h in read_topic(settings, topics.SLACK_MESSAGES)]
    alert = next(v for v in values if v["alert_id"] == alert_id)
    assert alert["channel_id"] == "U0DEMO0001"  # joined by e-mail, case-insensitively
