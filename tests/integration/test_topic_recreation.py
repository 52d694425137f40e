"""A source topic deleted and created again is read from its start, even when the new topic
already holds as many records as the tail sensor had read from the old one (offsets alone cannot
tell; the topic id can)."""

from __future__ import annotations

import json

import pytest
from dagster import DagsterInstance, RunsFilter

from alert_platform import topics
from alert_platform.kafka.admin import create_topics, delete_topics, topic_id
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import probe_end_offsets
from alert_platform.kafka.tailing import TailCursor
from alert_platform.local.demo import build_demo_data, produce_lookup_tables
from alert_platform.settings import Settings
from tests.integration.flow_helpers import (
    alert_ids_on_topic,
    connector_failure_alert_id,
    connector_status_event,
    tick_and_run,
)

pytestmark = pytest.mark.integration

PER_PARTITION = 3
NOTIFICATIONS_SPEC = next(s for s in topics.ALL_TOPICS if s.name == topics.NOTIFICATIONS)


def produce_failures(settings: Settings, orgs: list[str], tag: str) -> set[str]:
    """``PER_PARTITION`` provisioning failures on every partition; their alert ids."""
    producer = make_producer(settings)
    expected = set()
    for partition in range(NOTIFICATIONS_SPEC.partitions):
        for number in range(PER_PARTITION):
            org_id = orgs[(partition * PER_PARTITION + number) % len(orgs)]
            event, labels = connector_status_event(org_id, number, tag=f"{tag}{partition}")
            producer.produce(
                topics.NOTIFICATIONS,
                key=org_id.encode(),
                value=json.dumps(event).encode(),
                partition=partition,
            )
            expected.add(connector_failure_alert_id(org_id, labels))
    assert producer.flush(10) == 0
    return expected


def notification_ends(settings: Settings) -> dict[int, int]:
    consumer = make_consumer(settings)
    try:
        return probe_end_offsets(consumer, topics.NOTIFICATIONS)
    finally:
        consumer.close()


def test_recreated_topic_with_as_many_records_is_read_again(
    platform_env: Settings, instance: DagsterInstance
) -> None:
    settings = platform_env
    demo = build_demo_data()
    produce_lookup_tables(settings, demo)
    orgs = sorted(demo.assignments)
    first_alerts = produce_failures(settings, orgs, "old")
    old_id = topic_id(settings, topics.NOTIFICATIONS)
    assert old_id, "the local broker reports topic ids"

    first, runs = tick_and_run("connector_failure_tail", instance, None)
    assert runs and all(run.success for run in runs)
    assert first_alerts <= set(alert_ids_on_topic(settings))
    old_cursor = TailCursor.from_json(first.cursor)
    assert old_cursor.topic_id == old_id
    old_keys = {request.run_key for request in first.run_requests}

    # The topic goes away and comes back with exactly as many records per partition.
    delete_topics(settings, [topics.NOTIFICATIONS])
    create_topics(settings, [NOTIFICATIONS_SPEC])
    second_alerts = produce_failures(settings, orgs, "new")
    assert second_alerts.isdisjoint(first_alerts)
    assert notification_ends(settings) == dict(old_cursor.next_offsets)
    assert topic_id(settings, topics.NOTIFICATIONS) not in ("", old_id)

    second, reruns = tick_and_run("connector_failure_tail", instance, first.cursor)
    assert reruns and all(run.success for run in reruns)
    new_keys = {request.run_key for request in second.run_requests}
    # Dagster launches a sensor's run key once: the new topic's runs need keys of their own.
    assert new_keys.isdisjoint(old_keys)
    for key in old_keys:
        assert instance.get_runs(filters=RunsFilter(tags={"dagster/run_key": key}))
    assert second_alerts <= set(alert_ids_on_topic(settings))
    assert TailCursor.from_json(second.cursor).topic_id not in ("", old_id)

    # And it carries on as usual afterwards: nothing new, nothing launched.
    third, none = tick_and_run("connector_failure_tail", instance, second.cursor)
    assert none == [] and third.skip_reason is not None
