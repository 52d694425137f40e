"""Topic creation from the catalogue: partitions, compaction configs, idempotence."""

from __future__ import annotations

import uuid

import pytest

from alert_platform.kafka.admin import create_topics, describe_topic_configs, list_topics
from alert_platform.kafka.clients import make_admin
from alert_platform.settings import Settings
from alert_platform.topics import ALL_TOPICS, TopicSpec

pytestmark = pytest.mark.integration


def test_create_all_topics_with_partitions_and_configs(kafka_settings: Settings) -> None:
    create_topics(kafka_settings)  # the catalogue may exist already from another test
    existing = list_topics(kafka_settings)
    for spec in ALL_TOPICS:
        assert existing.get(spec.name) == spec.partitions, spec.name

    configs = describe_topic_configs(kafka_settings, [spec.name for spec in ALL_TOPICS])
    for spec in ALL_TOPICS:
        policy = configs[spec.name].get("cleanup.policy", "delete")
        assert policy == ("compact" if spec.compacted else "delete"), spec.name
    assert {spec.name for spec in ALL_TOPICS if spec.compacted} == {
        "data-csdr-assignment",
        "data-slack-users",
    }


def test_create_topics_is_idempotent_and_reports_only_new(kafka_settings: Settings) -> None:
    suffix = uuid.uuid4().hex[:10]
    specs = [
        TopicSpec(f"test-idem-a-{suffix}", 3, {"cleanup.policy": "compact"}),
        TopicSpec(f"test-idem-b-{suffix}", 2),
    ]
    assert create_topics(kafka_settings, specs) == [spec.name for spec in specs]
    assert create_topics(kafka_settings, specs) == []
    # A partly new list creates only the new one and leaves the others unchanged.
    extra = TopicSpec(f"test-idem-c-{suffix}", 1)
    changed = TopicSpec(specs[1].name, 5)  # an existing topic is not altered
    assert create_topics(kafka_settings, [*specs[:1], changed, extra]) == [extra.name]
    existing = list_topics(kafka_settings)
    assert existing[specs[0].name] == 3
    assert existing[specs[1].name] == 2
    assert existing[extra.name] == 1


def test_make_topic_fixture_creates_a_fresh_topic(make_topic, kafka_settings: Settings) -> None:
    name = make_topic(partitions=2, config={"cleanup.policy": "compact"})
    assert name.startswith("test-")
    metadata = make_admin(kafka_settings).list_topics(name, timeout=5)
    assert len(metadata.topics[name].partitions) == 2
    assert describe_topic_configs(kafka_settings, [name])[name]["cleanup.policy"] == "compact"


@pytest.mark.parametrize("run", [1, 2])
def test_unique_topic_is_fresh(unique_topic: str, run: int, kafka_settings: Settings) -> None:
    assert unique_topic.startswith(f"test-test_unique_topic_is_fresh-{run}-")
    assert unique_topic not in list_topics(kafka_settings)
    create_topics(kafka_settings, [TopicSpec(unique_topic, 1)])
