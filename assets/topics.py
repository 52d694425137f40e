"""Kafka topics as external assets: the sources and sinks at the edges of the lineage graph."""

from dagster import AssetKey, AssetSpec

from alert_platform.topics import TOPICS_BY_NAME


def topic_asset_key(topic: str) -> AssetKey:
    """``kafka/<topic_with_underscores>``."""
    return AssetKey(["kafka", topic.replace("-", "_")])


def topic_spec(topic: str, *, deps: list[AssetKey] | None = None) -> AssetSpec:
    """An external asset for ``topic``; ``deps`` draws the assets that write to it."""
    spec = TOPICS_BY_NAME[topic]
    return AssetSpec(
        key=topic_asset_key(topic),
        description=f"Kafka topic `{topic}`. {spec.description}",
        group_name="kafka",
        kinds={"kafka"},
        deps=deps or [],
        metadata={
            "topic": topic,
            "partitions": spec.partitions,
            "cleanup.policy": spec.config.get("cleanup.policy", "delete"),
        },
    )
