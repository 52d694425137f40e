"""Stream mode's hand-over on a real broker: a tail sensor launches nothing for what the stream
group committed, and exactly the uncovered ranges once they stayed uncovered past the lag bound.

The stream group's commits are made with a plain consumer in that group (what a worker's loop
does after each micro-batch), or by a real enrichment worker; the sensor runs in process with a
clock the test moves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition
from dagster import DagsterInstance, SensorDefinition, SensorResult, build_sensor_context

from alert_platform import topics
from alert_platform.delivery.handled_ranges import HandledRanges
from alert_platform.delivery.runner import ranges_already_delivered
from alert_platform.kafka.admin import create_topics, topic_id
from alert_platform.kafka.clients import make_admin, make_consumer, make_producer
from alert_platform.kafka.groups import committed_offsets
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.local.demo import build_demo_data, produce_lookup_tables
from alert_platform.settings import Settings
from alert_platform.stream.names import DELIVERY_STREAM, stream_group
from alert_platform.topics import TopicSpec
from assets.resources import PlatformResource
from sensors.topic_tail import make_topic_tail_sensor
from tests.integration.flow_helpers import connector_status_event
from tests.integration.stream_helpers import start_worker, wait_for

pytestmark = pytest.mark.integration

BOUND_S = 30.0
T0 = 2_000_000_000.0  # the test's clock (seconds); only differences matter


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream_env(platform_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Stream mode, the default bound, a stream group prefix of the test's own."""
    prefix = f"handover-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ALERT_PLATFORM_MODE", "stream")
    monkeypatch.setenv("ALERT_PLATFORM_STREAM_LAG_BOUND_S", str(BOUND_S))
    monkeypatch.setenv("ALERT_PLATFORM_STREAM_GROUP_PREFIX", prefix)
    return platform_env.with_overrides(mode="stream", stream_group_prefix=prefix)


@pytest.fixture
def source_topic(platform_env: Settings) -> Iterator[str]:
    name = f"handover-events-{uuid.uuid4().hex[:8]}"
    create_topics(platform_env, [TopicSpec(name, 2)])
    yield name


def produce(settings: Settings, topic: str, counts: dict[int, int]) -> None:
    producer = make_producer(settings)
    for partition, count in counts.items():
        for number in range(count):
            value = json.dumps({"n": number, "partition": partition}).encode()
            producer.produce(topic, key=b"k", value=value, partition=partition)
    assert producer.flush(10) == 0


def commit(settings: Settings, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for the topic's stream group, as a worker does after a batch."""
    group = stream_group(settings.stream_group_prefix, topic)
    consumer = make_consumer(settings, group_id=group)
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def ends_of(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings)
    try:
        return probe_end_offsets(consumer, topic)
    finally:
        consumer.close()


def tail_sensor(topic: str, clock: Clock, **options: object) -> SensorDefinition:
    return make_topic_tail_sensor(
        name="handover_tail", topic=topic, job_name="handover_job", op_name="handover_op",
        partitioned=False, clock=clock, stream_tick_s=0, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def evaluate(
    sensor: SensorDefinition, instance: DagsterInstance, cursor: str | None
) -> SensorResult:
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"platform": PlatformResource()}
    ) as context:
        result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


def launched(result: SensorResult) -> list[tuple[int, int, int]]:
    """(partition, start, end) of every range the tick requested a run for."""
    out = []
    for request in result.run_requests or []:
        for ops in request.run_config["ops"].values():
            out += [(r["partition"], r["start"], r["end"]) for r in ops["config"]["ranges"]]
    return sorted(out)


def next_offsets(result: SensorResult) -> dict[int, int]:
    """The next offset per partition in the tick's cursor."""
    return {int(p): o for p, o in json.loads(result.cursor or "{}")["next"].items()}


def test_committed_ranges_launch_nothing_and_the_cursor_moves_past_them(
    stream_env: Settings,
    source_topic: str,
    instance: DagsterInstance,
    capfd: pytest.CaptureFixture[str],
) -> None:
    settings, clock = stream_env, Clock()
    sensor = tail_sensor(source_topic, clock)
    commit(settings, source_topic, {0: 0, 1: 0})  # the workers joined an empty topic
    first = evaluate(sensor, instance, None)
    assert launched(first) == []
    produce(settings, source_topic, {0: 10, 1: 6})
    ends = ends_of(settings, source_topic)
    assert ends == {0: 10, 1: 6}
    commit(settings, source_topic, ends)  # ... and processed everything
    clock.now += 5
    capfd.readouterr()
    second = evaluate(sensor, instance, first.cursor)
    logged = capfd.readouterr().err  # the tick's log (Dagster's console handler)
    assert launched(second) == []
    assert next_offsets(second) == ends
    group = stream_group(settings.stream_group_prefix, source_topic)
    assert f"stream group {group} covered 16 record(s) ([0] 10, [1] 6)" in logged
    assert "catch-up launched: nothing" in logged
    clock.now += 10 * BOUND_S  # long after the bound: still nothing to catch up
    third = evaluate(sensor, instance, second.cursor)
    assert launched(third) == []
    assert next_offsets(third) == ends


def test_uncovered_records_launch_nothing_before_the_bound_and_exactly_themselves_after(
    stream_env: Settings, source_topic: str, instance: DagsterInstance
) -> None:
    settings, clock = stream_env, Clock()
    sensor = tail_sensor(source_topic, clock)
    commit(settings, source_topic, {0: 0})  # partition 1: the group never committed
    produce(settings, source_topic, {0: 10, 1: 6})
    first = evaluate(sensor, instance, None)
    assert launched(first) == []
    commit(settings, source_topic, {0: 4})  # the worker stops after 4 records
    clock.now += BOUND_S / 2
    second = evaluate(sensor, instance, first.cursor)
    assert launched(second) == []  # 0..3 of partition 0 covered, the rest within the bound
    assert next_offsets(second) == {0: 4, 1: 0}
    clock.now = T0 + BOUND_S  # not longer than the bound yet
    assert launched(evaluate(sensor, instance, second.cursor)) == []
    clock.now = T0 + BOUND_S + 1
    third = evaluate(sensor, instance, second.cursor)
    assert launched(third) == [(0, 4, 10), (1, 0, 6)]
    assert next_offsets(third) == {0: 10, 1: 6}
    # The worker comes back and commits past everything: nothing more is launched.
    commit(settings, source_topic, {0: 10, 1: 6})
    clock.now += 5
    assert launched(evaluate(sensor, instance, third.cursor)) == []


def test_a_group_that_starts_after_the_records_leaves_them_to_the_catch_up(
    stream_env: Settings, source_topic: str, instance: DagsterInstance
) -> None:
    # Records produced before the group's first commit (a worker starting at the end) are
    # not covered by it, even once its commits pass them.
    settings, clock = stream_env, Clock()
    sensor = tail_sensor(source_topic, clock)
    produce(settings, source_topic, {0: 5})
    first = evaluate(sensor, instance, None)
    commit(settings, source_topic, {0: 5})  # joined at the end: never read 0..4
    clock.now += 5
    second = evaluate(sensor, instance, first.cursor)
    assert launched(first) == launched(second) == []
    produce(settings, source_topic, {0: 3})
    commit(settings, source_topic, {0: 8})
    clock.now = T0 + BOUND_S + 1
    third = evaluate(sensor, instance, second.cursor)
    assert launched(third) == [(0, 0, 5)]
    clock.now += 5
    fourth = evaluate(sensor, instance, third.cursor)
    assert launched(fourth) == []  # 5..7: what the group read since the commit the sensor saw
    assert next_offsets(fourth) == {0: 8, 1: 0}


def test_batch_mode_is_unchanged(
    platform_env: Settings,
    source_topic: str,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERT_PLATFORM_MODE", "batch")
    settings, clock = platform_env.with_overrides(mode="batch"), Clock()
    commit(settings, source_topic, {0: 0, 1: 0})
    produce(settings, source_topic, {0: 4, 1: 2})
    commit(settings, source_topic, {0: 4, 1: 2})  # ignored in batch mode
    result = evaluate(tail_sensor(source_topic, clock), instance, None)
    assert launched(result) == [(0, 0, 4), (1, 0, 2)]
    assert "handover" not in json.loads(result.cursor or "{}")
    # A stream-mode cursor handed to batch mode loses its state and launches at once.
    monkeypatch.setenv("ALERT_PLATFORM_MODE", "stream")
    stream_tick = evaluate(tail_sensor(source_topic, clock), instance, None)
    assert "handover" in json.loads(stream_tick.cursor or "{}")
    monkeypatch.setenv("ALERT_PLATFORM_MODE", "batch")
    produce(settings, source_topic, {0: 1})
    batch_tick = evaluate(tail_sensor(source_topic, clock), instance, stream_tick.cursor)
    assert launched(batch_tick) == [(0, 0, 5), (1, 0, 2)]
    assert "handover" not in json.loads(batch_tick.cursor or "{}")


def test_the_delivery_sensor_applies_the_rule_on_top_of_its_handled_ranges(
    stream_env: Settings, instance: DagsterInstance
) -> None:
    # Built as alert_platform/definitions.py builds slack_delivery_tail, with the test's clock.
    settings, clock = stream_env, Clock()
    sensor = tail_sensor(
        topics.SLACK_MESSAGES, clock, max_records_per_run=2_000, settle_one_tick=True,
        needs_no_run=ranges_already_delivered,
    )  # fmt: skip
    start = ends_of(settings, topics.SLACK_MESSAGES)
    group_start = {p: start[p] for p in (0, 1, 2)}  # partition 3: the group never committed
    commit(settings, DELIVERY_STREAM, group_start)
    first = evaluate(sensor, instance, None)
    assert launched(first) == []
    produce(settings, topics.SLACK_MESSAGES, {0: 3, 1: 3, 2: 3, 3: 3})
    commit(settings, DELIVERY_STREAM, {0: start[0] + 3, 1: start[1] + 1, 2: start[2] + 1})
    # A batch delivery (e.g. an enrichment run's inline delivery) handled partition 1's rest.
    tid = topic_id(settings, topics.SLACK_MESSAGES)
    handled = OffsetRange(topics.SLACK_MESSAGES, 1, start[1] + 1, start[1] + 3)
    with HandledRanges(settings.effective_ledger_url) as table:
        table.record([handled], topic_id=tid, run_id="inline")
    clock.now += 5
    second = evaluate(sensor, instance, first.cursor)
    assert launched(second) == []
    clock.now += BOUND_S + 1
    third = evaluate(sensor, instance, second.cursor)
    assert launched(third) == [
        (2, start[2] + 1, start[2] + 3),
        (3, start[3], start[3] + 3),
    ]
    assert next_offsets(third) == {p: start[p] + 3 for p in range(4)}


def produce_events(settings: Settings, tag: str, partitions: int) -> dict[int, int]:
    """One provisioning failure per partition; the ends after them."""
    producer = make_producer(settings)
    for partition in range(partitions):
        event, _labels = connector_status_event(f"org-handover-{tag}", partition, tag=tag)
        value = json.dumps(event).encode()
        producer.produce(topics.NOTIFICATIONS, key=b"org", value=value, partition=partition)
    assert producer.flush(10) == 0
    return ends_of(settings, topics.NOTIFICATIONS)


def test_a_real_worker_hands_over_to_the_catch_up_when_it_stops(
    stream_env: Settings, instance: DagsterInstance
) -> None:
    settings, clock = stream_env, Clock()
    topic, group = (
        topics.NOTIFICATIONS,
        stream_group(stream_env.stream_group_prefix, topics.NOTIFICATIONS),
    )
    produce_lookup_tables(settings, build_demo_data(event_count=1, seed=3))
    sensor = tail_sensor(topic, clock)
    admin = make_admin(settings)
    start = ends_of(settings, topic)
    partitions = len(start)

    def group_at(ends: dict[int, int]) -> None:
        wait_for(lambda: committed_offsets(admin, group, topic, ends) == ends, 20, f"{ends}")

    worker = start_worker(settings, topic)  # a new group: starts at the end
    try:
        first = produce_events(settings, "a", partitions)
        group_at(first)
        tick = evaluate(sensor, instance, None)  # the sensor's first sight of the group
        assert launched(tick) == []
        second = produce_events(settings, "b", partitions)
        group_at(second)
        clock.now += 5
        tick = evaluate(sensor, instance, tick.cursor)
        assert launched(tick) == []
        # The worker's first batch came before the commit the sensor first saw, but the worker
        # recorded where its group started (stream_starts): covered too, nothing to catch up.
        clock.now = T0 + BOUND_S + 1
        tick = evaluate(sensor, instance, tick.cursor)
        assert launched(tick) == []
        clock.now += 5
        tick = evaluate(sensor, instance, tick.cursor)
        assert launched(tick) == []
        assert next_offsets(tick) == second
        # The worker stops: the new records wait out the bound, then exactly they are caught up.
        worker.halt()
        assert worker.errors == []
        third = produce_events(settings, "c", partitions)
        clock.now += 5
        tick = evaluate(sensor, instance, tick.cursor)
        assert launched(tick) == []
        clock.now += BOUND_S + 1
        tick = evaluate(sensor, instance, tick.cursor)
        assert launched(tick) == [(p, second[p], third[p]) for p in range(partitions)]
        assert committed_offsets(admin, group, topic, third) == second
    finally:
        if worker.thread.is_alive():
            worker.halt()


def test_in_stream_mode_the_sensor_looks_at_most_every_stream_tick(
    stream_env: Settings, source_topic: str, instance: DagsterInstance
) -> None:
    """Between two looks a tick only keeps the cursor: no probe, no launch, even with records
    long past the bound; the next look launches them."""
    from sensors.topic_tail import make_topic_tail_sensor

    settings, clock = stream_env, Clock()
    sensor = make_topic_tail_sensor(
        name="throttled_tail", topic=source_topic, job_name="some_job", op_name="some_op",
        partitioned=False, clock=clock, stream_tick_s=10,
    )  # fmt: skip
    first = evaluate(sensor, instance, None)
    produce(settings, source_topic, {0: 4, 1: 0})
    clock.now += BOUND_S + 1  # uncovered records, but only just seen: no launch yet
    second = evaluate(sensor, instance, first.cursor)
    assert launched(second) == []
    clock.now += BOUND_S + 1
    third = evaluate(sensor, instance, second.cursor)
    assert launched(third) != []
    clock.now += 5  # within the stream tick: the cursor is kept as it is
    fourth = evaluate(sensor, instance, third.cursor)
    assert fourth.cursor == third.cursor and launched(fourth) == []
    assert "looked at 5 s ago" in str(fourth.skip_reason)
