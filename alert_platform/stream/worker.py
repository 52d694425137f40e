"""A stream worker: the loop, its consumer group and its processor, made from the settings.

``alert-platform stream <stream>`` and the Dagster stream job both run :func:`build_worker`
then :meth:`StreamWorker.run`. The clients a caller already owns (the producer, the ledger, the
Slack client of a Dagster run's resources) are passed in; the rest is made here and closed by
:meth:`StreamWorker.close`.

Consumer group settings: cooperative-sticky assignment (a worker joining or leaving moves only
the partitions that change owner), no auto commit (the loop commits what it finished),
``auto.offset.reset=latest`` (a new group starts at the end: what came before is the tail
sensors' catch-up), ``max.poll.interval.ms`` of 10 minutes (a delivery batch is paced at
Slack's rate), ``fetch.queue.backoff.ms`` of 10 ms (as the batch readers).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from slack_sdk import WebClient

from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.outbox import Outbox
from alert_platform.kafka.admin import topic_id
from alert_platform.kafka.clients import make_admin, make_consumer
from alert_platform.kafka.writer import BatchProducer
from alert_platform.pipelines.registry import PIPELINES
from alert_platform.pipelines.runner import RUN_CONSUMER_CONFIG, load_join_tables
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from alert_platform.stream.delivery import DeliveryProcessor
from alert_platform.stream.enrichment import EnrichmentProcessor
from alert_platform.stream.loop import (
    BatchProcessor,
    HealthCallback,
    LoopOptions,
    LoopStats,
    StreamLoop,
)
from alert_platform.stream.names import DELIVERY_STREAM, check_stream, stream_group
from alert_platform.stream.starts import StreamStarts
from alert_platform.stream.tables import TableFollower
from alert_platform.tables.specs import TABLE_SPECS

GROUP_CONFIG: dict[str, str | int | bool] = {
    "partition.assignment.strategy": "cooperative-sticky",
    "enable.auto.commit": False,
    "auto.offset.reset": "latest",
    "max.poll.interval.ms": 600_000,
    # As for the batch runs' readers (pipelines/runner.py): a full prefetch queue must not stall
    # the next fetch for a second when the worker works off a backlog.
    **RUN_CONSUMER_CONFIG,
}

# Transient Slack failures per message within one micro-batch (a batch run allows 8): during an
# outage the batch ends within seconds and the loop's back-off retries it, so the worker stays
# responsive to a drain and the catch-up sees the lag.
STREAM_DELIVERY_ATTEMPTS = 3


@dataclass
class StreamWorker:
    """One stream's loop and what it owns."""

    stream: str
    loop: StreamLoop
    member: str
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> LoopStats:
        """Consume until ``stop`` is set (then drain, commit, leave the group), then close."""
        try:
            return self.loop.run(stop)
        finally:
            self.close()

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            with contextlib.suppress(Exception):  # best effort on the way out
                close()


def new_member_id(stream: str) -> str:
    """``stream:<stream>:<pid>-<random>``: the run-index run id and ledger owner of a worker."""
    return f"stream:{stream}:{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_worker(
    settings: Settings,
    stream: str,
    *,
    producer: BatchProducer | None = None,
    ledger: DeliveryLedger | None = None,
    client: WebClient | None = None,
    on_health: HealthCallback | None = None,
    member: str = "",
    **consumer_extra: str | int | bool,
) -> StreamWorker:
    """The worker of ``stream`` (a source topic, or ``slack-messages`` for delivery)."""
    check_stream(stream)
    member = member or new_member_id(stream)
    closers: list[Callable[[], None]] = []
    if producer is None:
        producer = BatchProducer.from_settings(settings, **{"linger.ms": 1})
        closers.append(lambda: producer.producer.flush(10))
    stream_id = topic_id(settings, stream)  # asked once: the delivery processor and the starts
    processor: BatchProcessor
    if stream == DELIVERY_STREAM:
        if ledger is None:
            ledger = DeliveryLedger(
                settings.effective_ledger_url,
                owner=member,
                lease=timedelta(seconds=settings.delivery_lease_s),
            )
            closers.append(ledger.close)
        outbox = Outbox(getattr(ledger, "url", None) or settings.effective_ledger_url)
        closers.append(outbox.close)
        processor = DeliveryProcessor(
            settings,
            client if client is not None else make_web_client(settings),
            ledger,
            outbox,
            producer,
            owner=member,
            topic_ids={stream: stream_id},
            max_attempts=STREAM_DELIVERY_ATTEMPTS,
        )
        max_batch = settings.stream_delivery_max_batch
    else:
        processor = _enrichment_processor(settings, stream, producer, member, closers)
        max_batch = settings.stream_max_batch
    group = stream_group(settings.stream_group_prefix, stream)
    fetch_wait = (
        {"fetch.wait.max.ms": settings.stream_fetch_wait_ms}
        if settings.stream_fetch_wait_ms
        else {}
    )
    consumer = make_consumer(
        settings, group_id=group, **{**GROUP_CONFIG, **fetch_wait, **consumer_extra}
    )
    options = LoopOptions(
        max_batch=max_batch,
        linger_s=settings.stream_linger_ms / 1000,
        health_interval_s=settings.stream_health_interval_s,
    )
    starts = StreamStarts(settings.effective_ledger_url)
    closers.append(starts.close)

    def on_start(offsets: dict[int, int]) -> None:
        starts.record(group, stream, offsets, stream_id)

    loop = StreamLoop(
        stream, group, consumer, processor, options, on_health=on_health, member=member,
        on_start=on_start,
    )  # fmt: skip
    return StreamWorker(stream, loop, member, closers)


def _enrichment_processor(
    settings: Settings,
    stream: str,
    producer: BatchProducer,
    member: str,
    closers: list[Callable[[], None]],
) -> EnrichmentProcessor:
    specs = [spec for spec in PIPELINES.values() if spec.source_topic == stream]
    names = list(dict.fromkeys(join.table for spec in specs for join in spec.joins))
    table_specs = {name: TABLE_SPECS[name] for name in names}

    def follow() -> TableFollower:
        loaded = {}
        for spec in specs:
            loaded.update(load_join_tables(settings, spec))
        return TableFollower(table_specs, loaded, make_consumer(settings), make_admin(settings))

    def table_ids() -> dict[str, str]:
        return {spec.topic: topic_id(settings, spec.topic) for spec in table_specs.values()}

    index = RunIndex(settings.effective_ledger_url)
    closers.append(index.close)
    processor = EnrichmentProcessor(
        specs,
        follow(),
        producer,
        RenderOptions.from_settings(settings),
        index=index,
        run_id=member,
        reload_tables=follow,
        table_ids=table_ids,
    )
    closers.append(processor.close)
    return processor


__all__ = ["GROUP_CONFIG", "StreamWorker", "build_worker", "new_member_id"]
