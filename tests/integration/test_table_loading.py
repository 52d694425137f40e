"""Lookup tables caught up from their (never compacted) topics on the real local broker."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from alert_platform.kafka.admin import create_topics, delete_topics, topic_id
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.settings import Settings
from alert_platform.tables.snapshot import load_snapshot, read_snapshot_info, save_snapshot
from alert_platform.tables.specs import CSDR_ASSIGNMENTS, SLACK_USERS, TableSpec
from alert_platform.tables.topic_loader import (
    OffsetsAhead,
    catch_up,
    load_table,
    refresh_snapshot,
)
from alert_platform.topics import TopicSpec

pytestmark = pytest.mark.integration

MakeTopic = Callable[..., str]


@pytest.fixture
def consumer(kafka_settings: Settings) -> Iterator[Consumer]:
    consumer = make_consumer(kafka_settings)
    yield consumer
    consumer.close()


@pytest.fixture
def producer(kafka_settings: Settings) -> Producer:
    return make_producer(kafka_settings)


def send(
    producer: Producer,
    topic: str,
    records: list[tuple[str | bytes | None, dict | bytes | None]],
    partition: int = 0,
) -> None:
    """Produce ``(key, value)`` records in one batch; dict values are JSON-encoded."""
    for key, value in records:
        producer.produce(
            topic,
            key=key.encode() if isinstance(key, str) else key,
            value=json.dumps(value).encode() if isinstance(value, dict) else value,
            partition=partition,
        )
    assert producer.flush(10) == 0


def assignment(org: str, email: str, name: str = "Ann", account: str = "Acme") -> dict:
    return {"org_id": org, "csdr_email": email, "csdr_name": name, "account_name": account}


def test_catch_up_applies_latest_version_tombstones_and_skips_malformed(
    make_topic: MakeTopic, producer: Producer, consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    send(
        producer,
        topic,
        [
            ("org-1", assignment("org-1", "a@x.io")),  # 0
            ("org-2", assignment("org-2", "b@x.io")),  # 1
            ("org-1", assignment("org-1", "c@x.io", account="Acme 2")),  # 2: replaces 0
            ("org-3", assignment("org-3", "d@x.io")),  # 3
            ("org-2", None),  # 4: tombstone
            ("org-4", b"{not json"),  # 5: malformed
            (None, assignment("org-5", "e@x.io")),  # 6: no key
            ("org-6", b"[1, 2]"),  # 7: not an object
            ("org-3", None),  # 8: tombstone ...
        ],
    )
    send(producer, topic, [("org-3", assignment("org-3", "f@x.io"))])  # 9: ... then back
    send(producer, topic, [("org-7", {"csdr_email": "g@x.io"})])  # 10: key column from the key
    table = CSDR_ASSIGNMENTS.new_table()

    offsets, stats = catch_up(
        table, topic, {}, consumer, CSDR_ASSIGNMENTS.parse_value, key_field="org_id"
    )

    assert offsets == {0: 11}
    assert stats.records == 11 and stats.ranges == [OffsetRange(topic, 0, 0, 11)]
    assert (stats.upserts, stats.deletes, stats.malformed_count) == (6, 2, 3)
    assert sorted(table) == ["org-1", "org-3", "org-7"]
    assert table.get("org-1") == assignment("org-1", "c@x.io", account="Acme 2")
    assert table.get("org-2") is None
    assert table.get("org-3")["csdr_email"] == "f@x.io"  # type: ignore[index]
    assert table.get("org-7") == {
        "org_id": "org-7",
        "csdr_email": "g@x.io",
        "csdr_name": None,
        "account_name": None,
    }
    reasons = dict(stats.malformed)
    assert set(reasons) == {f"{topic}:0:5", f"{topic}:0:6", f"{topic}:0:7"}
    assert "not valid JSON" in reasons[f"{topic}:0:5"]
    assert reasons[f"{topic}:0:6"] == "record has no key"
    assert "expected an object" in reasons[f"{topic}:0:7"]


def test_catch_up_resumes_from_offsets_without_rereading(
    make_topic: MakeTopic, producer: Producer, consumer: Consumer
) -> None:
    topic = make_topic(partitions=3)
    for partition in range(3):
        send(
            producer,
            topic,
            [
                (f"org-{partition}-{i}", assignment(f"org-{partition}-{i}", "a@x.io"))
                for i in range(50)
            ],
            partition=partition,
        )
    table = CSDR_ASSIGNMENTS.new_table()
    offsets, first = catch_up(table, topic, {}, consumer, CSDR_ASSIGNMENTS.parse_value)
    assert offsets == {0: 50, 1: 50, 2: 50} and first.records == 150 and len(table) == 150

    # Nothing new: nothing read.
    same, idle = catch_up(table, topic, offsets, consumer, CSDR_ASSIGNMENTS.parse_value)
    assert same == offsets and idle.records == 0 and idle.ranges == [] and not idle.changed

    send(producer, topic, [("org-1-3", assignment("org-1-3", "new@x.io")), ("org-1-4", None)], 1)
    send(producer, topic, [("org-new", assignment("org-new", "n@x.io"))], 2)
    offsets2, second = catch_up(table, topic, offsets, consumer, CSDR_ASSIGNMENTS.parse_value)
    assert offsets2 == {0: 50, 1: 52, 2: 51}
    assert second.records == 3
    assert second.ranges == [OffsetRange(topic, 1, 50, 52), OffsetRange(topic, 2, 50, 51)]
    assert table.get("org-1-3")["csdr_email"] == "new@x.io"  # type: ignore[index]
    assert "org-1-4" not in table and "org-new" in table and len(table) == 150


def test_catch_up_refuses_offsets_past_the_end(
    make_topic: MakeTopic, producer: Producer, consumer: Consumer
) -> None:
    topic = make_topic(partitions=1)
    send(producer, topic, [("org-1", assignment("org-1", "a@x.io"))])
    with pytest.raises(OffsetsAhead, match="recreated"):
        catch_up(
            CSDR_ASSIGNMENTS.new_table(), topic, {0: 5}, consumer, CSDR_ASSIGNMENTS.parse_value
        )


@pytest.fixture
def users_spec(make_topic: MakeTopic) -> TableSpec:
    return replace(SLACK_USERS, topic=make_topic(partitions=2))


def user(email: str, uid: str, name: str = "Person") -> dict:
    return {"email": email, "slack_user_id": uid, "name": name}


def test_refresh_snapshot_then_load_table_reads_only_new_records(
    kafka_settings: Settings, users_spec: TableSpec, producer: Producer, tmp_path: Path
) -> None:
    topic = users_spec.topic
    send(
        producer,
        topic,
        [("Ann@X.io", user("Ann@X.io", "U1")), ("bob@x.io", user("bob@x.io", "U2"))],
    )
    send(producer, topic, [("cy@x.io", user("cy@x.io", "U3"))], partition=1)

    first = refresh_snapshot(kafka_settings, users_spec, tmp_path)
    assert first.snapshot_saved and first.snapshot_path == tmp_path / "slack_users.parquet"
    assert first.offsets == {0: 2, 1: 1} and first.stats.records == 3
    assert first.table.get("ANN@x.io") == user("Ann@X.io", "U1")  # key lower-cased
    info = read_snapshot_info(first.snapshot_path)
    assert info is not None and info.offsets == {0: 2, 1: 1} and info.topic == topic

    # Nothing new: the snapshot is not rewritten.
    again = refresh_snapshot(kafka_settings, users_spec, tmp_path)
    assert not again.snapshot_saved and again.stats.records == 0 and len(again.table) == 3

    send(producer, topic, [("ANN@x.io", user("ann@x.io", "U1b")), ("bob@x.io", None)])
    loaded = load_table(kafka_settings, users_spec, tmp_path)
    assert loaded.snapshot_offsets == {0: 2, 1: 1} and not loaded.rebuilt
    assert loaded.stats.records == 2  # resumed from the snapshot, not from offset 0
    assert loaded.stats.ranges == [OffsetRange(topic, 0, 2, 4)]
    assert loaded.offsets == {0: 4, 1: 1}
    assert loaded.table.get("ann@x.io")["slack_user_id"] == "U1b"  # type: ignore[index]
    assert loaded.table.get("bob@x.io") is None and len(loaded.table) == 2
    # load_table does not write; the snapshot still holds the old state.
    table, offsets = load_snapshot(first.snapshot_path, users_spec)
    assert offsets == {0: 2, 1: 1} and len(table) == 3


def test_load_table_rebuilds_when_snapshot_is_ahead_or_corrupt(
    kafka_settings: Settings, users_spec: TableSpec, producer: Producer, tmp_path: Path
) -> None:
    topic = users_spec.topic
    send(producer, topic, [("ann@x.io", user("ann@x.io", "U1"))])
    path = users_spec.snapshot_path(tmp_path)
    # A snapshot from before the topic was recreated: offsets far past today's end.
    stale = users_spec.new_table()
    stale.upsert("ghost@x.io", user("ghost@x.io", "U0"))
    save_snapshot(stale, {0: 1000, 1: 0}, path, topic=topic)

    loaded = refresh_snapshot(kafka_settings, users_spec, tmp_path)
    assert loaded.rebuilt and loaded.snapshot_saved
    assert sorted(loaded.table) == ["ann@x.io"] and loaded.offsets == {0: 1, 1: 0}
    assert any("recreated" in note for note in loaded.stats.notes)

    path.write_bytes(b"not parquet at all")
    loaded = load_table(kafka_settings, users_spec, tmp_path)
    assert loaded.rebuilt and sorted(loaded.table) == ["ann@x.io"]
    assert any("ignoring snapshot" in note for note in loaded.stats.notes)


def test_load_table_without_snapshot_dir_uses_settings(
    kafka_settings: Settings, users_spec: TableSpec, producer: Producer, tmp_path: Path
) -> None:
    send(producer, users_spec.topic, [("ann@x.io", user("ann@x.io", "U1"))], partition=1)
    settings = kafka_settings.with_overrides(data_dir=tmp_path)
    loaded = refresh_snapshot(settings, users_spec)
    assert loaded.snapshot_path == tmp_path / "tables" / "slack_users.parquet"
    assert loaded.snapshot_path.exists() and loaded.offsets == {0: 0, 1: 1}


def test_load_table_rebuilds_when_the_topic_was_recreated_with_as_many_records(
    kafka_settings: Settings, users_spec: TableSpec, producer: Producer, tmp_path: Path
) -> None:
    """The new topic holds as many records as the snapshot had read from the old one: offsets
    cannot tell, the topic id can. The old rows must not survive into the new table."""
    topic = users_spec.topic
    send(producer, topic, [("old@x.io", user("old@x.io", "U0"))])
    first = refresh_snapshot(kafka_settings, users_spec, tmp_path)
    old_id = topic_id(kafka_settings, topic)
    assert old_id and first.topic_id == old_id
    info = read_snapshot_info(users_spec.snapshot_path(tmp_path))
    assert info is not None and info.topic_id == old_id

    delete_topics(kafka_settings, [topic])
    create_topics(kafka_settings, [TopicSpec(topic, 2)])
    send(producer, topic, [("new@x.io", user("new@x.io", "U9"))])
    loaded = refresh_snapshot(kafka_settings, users_spec, tmp_path)
    assert loaded.offsets == first.offsets  # same offsets, other topic
    assert loaded.rebuilt and loaded.snapshot_saved
    assert sorted(loaded.table) == ["new@x.io"]
    assert any("recreated since" in note for note in loaded.stats.notes)
    info = read_snapshot_info(users_spec.snapshot_path(tmp_path))
    assert info is not None and info.topic_id == loaded.topic_id != old_id

    # From then on the snapshot is simply current.
    again = load_table(kafka_settings, users_spec, tmp_path)
    assert not again.rebuilt and sorted(again.table) == ["new@x.io"]
