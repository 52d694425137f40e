"""Lookup tables that a stream worker keeps current itself (GlobalKTable semantics).

Each table is loaded once (snapshot, then its topic to the end, as a batch run does), then
followed: before every micro-batch is joined, :meth:`TableFollower.sync` asks the broker for
the table topics' latest offsets (one ``list_offsets`` call for all of them) and applies every
record below them. The guarantee, the batch runs' own: **a table record whose write the broker
acknowledged before the worker fetched an event is applied before that event is joined**
(the offsets are asked after the event was fetched). A record written later may or may not be
seen by it.

The follower's consumer is assigned every table partition and kept *paused* between syncs, so
an idle worker sends no table fetches; a sync resumes only the partitions that are behind.
The local broker's high watermark is the base offset of a partition's last batch + 1, so a
partition counts as caught up once that offset was read and the records already fetched with
it (the rest of that batch) were applied.

A table topic recreated under a running worker (its offsets start over) is not detected here
(the local broker's inexact high watermark cannot tell it from a partition read to its end):
the worker's processor compares the topics' ids at every health report and reloads the tables
when one changed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from alert_platform.kafka.offsets import list_partitions
from alert_platform.kafka.records import SourceRecord
from alert_platform.tables.lookup import LookupTable
from alert_platform.tables.specs import TableSpec
from alert_platform.tables.topic_loader import CatchUpStats, LoadedTable, apply_records

SYNC_TIMEOUT_S = 10.0


class TableSyncError(RuntimeError):
    """A table could not be brought up to the broker's offsets in time (the batch is retried)."""


class TableFollower:
    """``loaded`` tables (by name, of ``specs``) kept current through ``consumer`` (assign
    only, owned by the follower) and ``admin`` (for the latest offsets)."""

    def __init__(
        self,
        specs: Mapping[str, TableSpec],
        loaded: Mapping[str, LoadedTable],
        consumer: Consumer,
        admin: AdminClient,
        *,
        timeout_s: float = SYNC_TIMEOUT_S,
    ) -> None:
        self.specs = dict(specs)
        self.tables: dict[str, LookupTable] = {name: t.table for name, t in loaded.items()}
        self.consumer = consumer
        self.admin = admin
        self.timeout_s = timeout_s
        self.stats = CatchUpStats()
        self._by_topic = {spec.topic: name for name, spec in self.specs.items()}
        # next offset to apply per (topic, partition)
        self.offsets: dict[tuple[str, int], int] = {}
        for name, spec in self.specs.items():
            partitions = list_partitions(consumer, spec.topic)
            for partition in partitions:
                self.offsets[(spec.topic, partition)] = loaded[name].offsets.get(partition, 0)
        self._assignment = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
        consumer.assign(self._assignment)
        consumer.pause(self._assignment)
        self.syncs = 0
        self.records_applied = 0

    def lookups(self) -> dict[str, LookupTable]:
        """The tables by name, for ``enrich_batch``."""
        return self.tables

    def latest(self) -> dict[tuple[str, int], int]:
        """The broker's latest offset of every followed partition (one ``list_offsets`` call
        for all of them)."""
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, p in self.offsets}
        try:
            futures = self.admin.list_offsets(request, request_timeout=self.timeout_s)
            return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}
        except Exception as exc:  # KafkaException from the call or a future
            raise TableSyncError(f"latest offsets of the lookup table topics: {exc}") from exc

    def sync(self) -> int:
        """Apply every table record below the broker's latest offsets; how many were read."""
        targets = {tp: high for tp, high in self.latest().items() if high > self.offsets[tp]}
        self.syncs += 1
        if not targets:
            return 0
        behind = [TopicPartition(t, p) for t, p in targets]
        self.consumer.resume(behind)
        read = 0
        try:
            deadline = time.monotonic() + self.timeout_s
            while any(self.offsets[tp] < high for tp, high in targets.items()):
                if time.monotonic() > deadline:
                    late = {tp: (self.offsets[tp], h) for tp, h in targets.items()
                            if self.offsets[tp] < h}  # fmt: skip
                    raise TableSyncError(f"lookup tables not caught up in {self.timeout_s} s: "
                                         f"(next, target) {late}")  # fmt: skip
                read += self._apply(self.consumer.consume(1_000, timeout=0.05))
            # the rest of the batch the last target offset came in (already fetched)
            while more := self.consumer.consume(1_000, timeout=0):
                read += self._apply(more)
        finally:
            self.consumer.pause(behind)
        self.records_applied += read
        return read

    def _apply(self, messages: Sequence[object]) -> int:
        by_topic: dict[str, list[SourceRecord]] = {}
        for message in messages:
            error = message.error()  # type: ignore[attr-defined]
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise TableSyncError(f"reading a lookup table topic failed: {error}")
            topic, partition, offset = message.topic(), message.partition(), message.offset()  # type: ignore[attr-defined]
            key = (topic, partition)
            if key not in self.offsets or offset < self.offsets[key]:
                continue
            headers = message.headers()  # type: ignore[attr-defined]
            by_topic.setdefault(topic, []).append(
                SourceRecord(topic, partition, offset, message.timestamp()[1],  # type: ignore[attr-defined]
                             message.key(), message.value(), tuple(headers) if headers else ())  # type: ignore[attr-defined]
            )  # fmt: skip
            self.offsets[key] = offset + 1
        for topic, records in by_topic.items():
            name = self._by_topic[topic]
            apply_records(self.tables[name], records, self.specs[name], self.stats)
        return sum(len(r) for r in by_topic.values())

    def close(self) -> None:
        with contextlib.suppress(KafkaException):  # best effort
            self.consumer.close()
