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
    check_passed,
    connector_failure_alert_id,
    connector_status_event,
    expected_alert_ids,
    latest_materialization_metadata,
    materializations,
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

    # Run metadata is recorded on the asset's materializations; the run's own delivery is its
    # own asset, whose counts are what the sandbox received (none of it with inline off).
    metadata = latest_materialization_metadata(instance, "connector_failure_alerts")
    assert metadata["mode"] == "live"
    assert {"read", "filtered_out", "unmatched", "routed_to_fallback", "alerts"} <= set(metadata)
    assert "inline_delivery" not in metadata
    inline_runs = materializations(instance, "connector_failure_deliveries")
    if inline:
        (delivered,) = inline_runs
        assert delivered["inline_delivery"] == "done" and delivered["mode"] == "live"
        assert delivered["delivered"] == len(expected) == len(posted_alert_ids(sandbox))
        assert delivered["records_read"] == len(expected)
        assert delivered["handled_ranges"] >= 1
        assert check_passed(instance, "connector_failure_deliveries", "no_permanent_failures")
    else:
        assert inline_runs == [] and posted_alert_ids(sandbox) == []

    # A second tick with nothing new launches nothing.
    again, reruns = tick_and_run("connector_failure_tail", instance, result.cursor)
    assert reruns == [] and again.skip_reason is not None

    # The delivery sensor settles one tick, then delivers what is not delivered yet.
    first, none_yet = tick_and_run("slack_delivery_tail", instance, None)
    assert none_yet == []
    _, delivery_runs = tick_and_run("slack_delivery_tail", instance, first.cursor)
    if inline:
        assert delivery_runs == [], "ranges delivered inline need no delivery run"
        assert materializations(instance, "slack_deliveries") == []
    else:
        assert len(delivery_runs) == 1 and delivery_runs[0].success
        (caught_up,) = materializations(instance, "slack_deliveries")
        assert caught_up["delivered"] == len(expected) == len(posted_alert_ids(sandbox))
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
    replay = latest_materialization_metadata(instance, "slack_deliveries")
    assert replay["delivered"] == 0 and replay["already_delivered"] >= len(expected)


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


def test_the_delivery_tick_asks_the_ledger_not_kafka(
    platform_env: Settings, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range a delivery recorded as handled is skipped with Kafka's records out of reach (a
    poison record in it, every read failing): the tick reads the handled-ranges table only."""
    from dagster import build_sensor_context

    import alert_platform.delivery.runner as runner
    import alert_platform.kafka.reader as reader
    from alert_platform.delivery.handled_ranges import HandledRanges
    from alert_platform.kafka.admin import topic_id
    from alert_platform.kafka.tailing import TailCursor

    settings = platform_env
    consumer = make_consumer(settings)
    before = probe_end_offsets(consumer, topics.SLACK_MESSAGES)
    producer = make_producer(settings)
    for partition in (0, 1):
        producer.produce(topics.SLACK_MESSAGES, b"\xff\xfe not json", b"poison", partition)
    producer.flush(10)
    after = probe_end_offsets(consumer, topics.SLACK_MESSAGES)
    consumer.close()
    handled, unhandled = (
        OffsetRange(topics.SLACK_MESSAGES, p, before[p], after[p]) for p in (0, 1)
    )
    tid = topic_id(settings, topics.SLACK_MESSAGES)
    with HandledRanges(settings.effective_ledger_url) as table:
        table.record([handled], topic_id=tid, run_id="an-inline-delivery")

    def no_kafka(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the delivery tick read slack-messages records")

    monkeypatch.setattr(reader, "read_range", no_kafka)
    monkeypatch.setattr(runner, "read_messages", no_kafka)
    monkeypatch.setattr(runner, "needs_delivery", no_kafka)

    defs, repository = repo()
    cursor = TailCursor(next_offsets=before, observed=after, topic_id=tid).to_json()
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:
        result = repository.get_sensor_def("slack_delivery_tail")(context)
    requested = [
        r
        for request in result.run_requests
        for r in request.run_config["ops"]["slack_deliveries"]["config"]["ranges"]
    ]
    assert requested == [unhandled.as_dict()]
    pending = TailCursor.from_json(result.cursor).pending
    assert [p.range for p in pending] == [unhandled]
