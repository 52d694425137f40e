"""Consumer groups as the tail sensors see them: what a stream's group has committed.

The platform's own readers never commit (see :mod:`alert_platform.kafka.clients`); the stream
workers do, and in stream mode a tail sensor asks what their group has committed to decide
which ranges the stream already handled (:mod:`alert_platform.stream.handover`).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import OFFSET_INVALID, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


class GroupOffsetsError(RuntimeError):
    """The committed offsets of a group could not be read (broker trouble, timeout)."""


def committed_offsets(
    admin: AdminClient,
    group: str,
    topic: str,
    partitions: Iterable[int],
    *,
    timeout: float = 10.0,
) -> dict[int, int]:
    """Partition -> the offset ``group`` committed on ``topic`` (the next offset to read).

    A partition without a commit (``OFFSET_INVALID``, a group that does not exist, a
    per-partition error) is absent: the group has covered nothing there. Raises
    :class:`GroupOffsetsError` when the request itself fails.
    """
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in wanted])
    try:
        futures = admin.list_consumer_group_offsets([request], request_timeout=timeout)
        answer = futures[group].result(timeout=timeout)
    except Exception as exc:  # KafkaException, timeouts of the future
        raise GroupOffsetsError(
            f"cannot read the offsets group {group!r} committed on {topic}: {exc}"
        ) from exc
    out: dict[int, int] = {}
    for tp in answer.topic_partitions or ():
        if tp.topic != topic or tp.error is not None or tp.offset == OFFSET_INVALID:
            continue
        if tp.offset >= 0:
            out[tp.partition] = tp.offset
    return out
