"""The record type the hot path works on, independent of any Kafka client."""

from __future__ import annotations

from typing import NamedTuple


class SourceRecord(NamedTuple):
    """One Kafka record as read from a topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def position(self) -> str:
        """``topic:partition:offset``, the record's address for lineage and dead letters."""
        return f"{self.topic}:{self.partition}:{self.offset}"
