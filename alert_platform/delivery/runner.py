"""One delivery run: read exact ``slack-messages`` ranges, post them, write the outcomes back.

Every attempt's outcome goes to ``slack-responses`` (keyed by alert id) and every message Slack
refuses for good to ``slack-messages-dlq``. Both are flushed before the run reports, also when
it fails, so nothing learned about Slack is lost.

``slack-responses`` is at least once: each record is first committed to the outbox in the ledger
database (:mod:`alert_platform.delivery.outbox`), then produced; the run's rows are marked sent
after the producer's flush. Every run starts by re-producing the rows a dead run left unsent
(older than the delivery lease). Repeats carry the same ``response_id``.

Live delivery posts nothing older than ``settings.max_alert_age_hours`` (outcome ``stale``);
``allow_stale=True`` (explicit backfills) posts it anyway. Lease, call deadline and the
``Retry-After`` cap come from the settings.

A run that finished every record of its ranges (and flushed the outcomes) records them in
:mod:`alert_platform.delivery.handled_ranges`; :func:`ranges_already_delivered`, which the
delivery tail sensor's tick calls, answers from that table only (no Kafka read) and never
raises. :func:`needs_delivery` asks Kafka and the ledger instead (tools and tests; never a tick).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient

from alert_platform import topics
from alert_platform.delivery.deliverer import DeliveryReport, deliver_batch, shared_pacer
from alert_platform.delivery.handled_ranges import HandledRanges
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import parse_records
from alert_platform.delivery.outbox import Outbox
from alert_platform.delivery.written_alerts import WrittenAlerts
from alert_platform.kafka.admin import topic_id as current_topic_id
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import BROKER_HINT, OffsetRange
from alert_platform.kafka.reader import read_ranges
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer, ProduceError
from alert_platform.pipelines.registry import PIPELINES
from alert_platform.settings import Settings
from alert_platform.wire import encode_slack_response

LOG = logging.getLogger("alert_platform.delivery.runner")


@dataclass
class DeliveryRunReport:
    """What a delivery run read and what became of it."""

    ranges: list[OffsetRange]
    records_read: int = 0
    delivery: DeliveryReport | None = None
    responses_written: int = 0
    responses_replayed: int = 0
    outbox_errors: int = 0
    dead_letters_written: int = 0
    # ranges recorded as handled (every record finished) for the delivery sensor
    handled_ranges: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def stale(self) -> int:
        """Alerts not posted because they were older than the maximum alert age."""
        delivery = self.delivery
        if delivery is None:
            return 0
        counted = getattr(delivery, "stale", None)
        if isinstance(counted, int):
            return counted
        return sum(1 for result in delivery.results if result.status == "stale")

    def metadata(self) -> dict[str, Any]:
        """Flat figures for run metadata and logs."""
        counts = self.delivery.summary() if self.delivery is not None else {}
        return {
            "records_read": self.records_read,
            "responses_written": self.responses_written,
            "responses_replayed": self.responses_replayed,
            "stale": self.stale,
            "dead_letters_written": self.dead_letters_written,
            "handled_ranges": self.handled_ranges,
            "elapsed_s": round(self.elapsed_s, 3),
            "offset_ranges": [str(r) for r in self.ranges],
            **counts,
        }


def read_messages(settings: Settings, ranges: Sequence[OffsetRange]) -> list[SourceRecord]:
    """Every record of ``ranges`` (a delivery run's input is small: at most one range)."""
    consumer = make_consumer(settings)
    try:
        return [record for batch in read_ranges(consumer, ranges) for record in batch]
    finally:
        consumer.close()


def pipeline_max_ages() -> dict[str, timedelta]:
    """The pipelines that set their own maximum alert age (``PipelineSpec.max_alert_age``)."""
    return {name: s.max_alert_age for name, s in PIPELINES.items() if s.max_alert_age is not None}


def run_delivery(
    settings: Settings,
    client: WebClient,
    ranges: Sequence[OffsetRange],
    *,
    ledger: DeliveryLedger | None = None,
    owner: str | None = None,
    allow_stale: bool = False,
    outbox: Outbox | None = None,
    producer: BatchProducer | None = None,
    records: Sequence[SourceRecord] | None = None,
    topic_ids: Mapping[str, str] | None = None,
    **deliver_options: Any,
) -> DeliveryRunReport:
    """Deliver the alerts in ``ranges`` exactly once; raise what ``deliver_batch`` raises.

    ``owner`` names this run's ledger claims (the Dagster run id, so ``explain`` can say which
    run delivered an alert); it applies when no ``ledger`` is passed (default: a fresh id).
    Pacing and lane threads come from ``settings`` (``SLACK_CHANNEL_RATE_PER_S``,
    ``SLACK_CHANNEL_BURST``, ``ALERT_PLATFORM_DELIVERY_WORKERS``) unless ``deliver_options``
    names a ``pacer`` / ``max_workers``. ``allow_stale``: post alerts older than
    ``settings.max_alert_age_hours`` too (explicit backfills only). ``outbox``: the
    ``slack-responses`` outbox (default: the one in the ledger's database). ``producer``: the
    run's Kafka producer for outcomes (default: a new one from ``settings``). ``records``: the
    records of ``ranges``, already read (a stream worker's micro-batch: every record of each
    range, nothing else); default: read here. ``topic_ids``: the ids of the ranges' topics when
    the caller knows them (else asked from the broker, to record the handled ranges).
    """
    if deliver_options.get("pacer") is None:
        deliver_options["pacer"] = shared_pacer(
            client.base_url, settings.slack_channel_rate_per_s, settings.slack_channel_burst
        )
    deliver_options.setdefault("max_workers", settings.delivery_max_workers)
    lease = timedelta(seconds=settings.delivery_lease_s)
    deliver_options.setdefault("lease", lease)
    deliver_options.setdefault("max_age", timedelta(hours=settings.max_alert_age_hours))
    deliver_options.setdefault("retry_after_max", settings.slack_retry_after_max_s)
    deliver_options.setdefault("max_age_by_pipeline", pipeline_max_ages())
    deliver_options.setdefault(
        "max_future", timedelta(minutes=settings.event_time_max_future_minutes)
    )
    started = time.monotonic()
    report = DeliveryRunReport(list(ranges))
    records = list(records) if records is not None else read_messages(settings, ranges)
    report.records_read = len(records)
    own_ledger = ledger is None
    ledger = ledger or DeliveryLedger(settings.effective_ledger_url, owner=owner, lease=lease)
    state_url = getattr(ledger, "url", None) or settings.effective_ledger_url
    own_outbox = outbox is None
    outbox = outbox or Outbox(state_url)
    out = producer if producer is not None else BatchProducer.from_settings(settings)
    sent_ids: list[int] = []
    try:
        report.responses_replayed = _replay_outbox(outbox, out, sent_ids, grace=lease)
    except Exception as exc:  # the outbox cannot be read: deliver anyway, replay next run
        LOG.error("could not re-produce unsent slack-responses from the outbox: %s", exc)
        report.errors.append(f"outbox replay: {type(exc).__name__}: {exc}")

    def on_response(record: dict[str, Any]) -> None:
        key = str(record["alert_id"])
        try:
            sent_ids.append(outbox.add(record, key=key))
        except Exception as exc:  # produce it anyway (at most once for this record)
            report.outbox_errors += 1
            LOG.error("could not store a slack-responses record in the outbox: %s", exc)
        out.produce(topics.SLACK_RESPONSES, key.encode(), encode_slack_response(record))
        report.responses_written += 1

    try:
        report.delivery = deliver_batch(
            records,
            client,
            ledger,
            window=timedelta(hours=settings.dedup_window_hours),
            on_response=on_response,
            allow_stale=allow_stale,
            **deliver_options,
        )
    except Exception as exc:
        partial = getattr(exc, "report", None)
        if isinstance(partial, DeliveryReport):
            report.delivery = partial
        raise
    finally:
        try:
            _write_outcomes(out, report)
            _mark_sent(outbox, sent_ids, report)
        finally:
            if own_outbox:
                outbox.close()
            if own_ledger:
                ledger.close()
            report.elapsed_s = time.monotonic() - started
    _record_handled(settings, ranges, report, url=state_url, owner=owner, topic_ids=topic_ids)
    return report


def finished(report: DeliveryRunReport) -> bool:
    """Whether every record read has its final outcome (posted, duplicate, suppressed,
    dead-lettered or stale) and nothing was left for a later run."""
    delivery = report.delivery
    if delivery is None:
        return report.records_read == 0
    left = delivery.released + delivery.unfinished + delivery.not_attempted
    return left == 0 and delivery.stopped_by is None


def _record_handled(
    settings: Settings,
    ranges: Sequence[OffsetRange],
    report: DeliveryRunReport,
    *,
    url: str,
    owner: str | None,
    topic_ids: Mapping[str, str] | None = None,
) -> None:
    """Tell the delivery sensor (through the ledger database) that ``ranges`` need no run.
    Never raises: a range not recorded merely gets a catch-up run, which finds duplicates."""
    if not ranges or not finished(report):
        return
    try:
        known = topic_ids or {}
        ids = {
            rng.topic: known.get(rng.topic) or current_topic_id(settings, rng.topic)
            for rng in ranges
        }
        with HandledRanges(url) as handled:
            for topic, tid in ids.items():
                mine = [rng for rng in ranges if rng.topic == topic]
                handled.record(mine, topic_id=tid, run_id=owner or "")
        report.handled_ranges = len(ranges)
    except Exception as exc:
        LOG.warning(
            "could not record %d delivered range(s) as handled (%s: %.300s); the delivery "
            "sensor gives them a catch-up run",
            len(ranges),
            type(exc).__name__,
            exc,
        )


def _replay_outbox(
    outbox: Outbox, out: BatchProducer, sent_ids: list[int], *, grace: timedelta
) -> int:
    """Produce the outbox rows a dead run left unsent (older than ``grace``); how many."""
    rows = outbox.pending(datetime.now(UTC) - grace)
    for row in rows:
        out.produce(topics.SLACK_RESPONSES, row.key.encode(), row.value)
        sent_ids.append(row.id)
    if rows:
        LOG.warning("re-produced %d slack-responses record(s) a dead run left unsent", len(rows))
    return len(rows)


def _mark_sent(outbox: Outbox, ids: list[int], report: DeliveryRunReport) -> None:
    """After a successful flush: the run's outbox rows are on the topic (a failure here only
    means they are produced again by a later run, with the same ``response_id``)."""
    try:
        outbox.mark_sent(ids)
    except Exception as exc:
        LOG.error("could not mark %d outbox record(s) sent: %s", len(ids), exc)
        report.errors.append(f"outbox mark_sent: {type(exc).__name__}: {exc}")


def _write_outcomes(out: BatchProducer, report: DeliveryRunReport) -> None:
    """The dead letters, then a flush of everything (``slack-responses`` included); any failure
    is a :class:`ProduceError` that names the broker setting."""
    delivery = report.delivery
    try:
        for letter in delivery.dead_letters if delivery is not None else ():
            out.produce(topics.SLACK_MESSAGES_DLQ, letter.key, letter.dlq_value())
            report.dead_letters_written += 1
        out.flush()
    except ProduceError:
        raise
    except Exception as exc:
        # Whatever else the client raises (BatchProducer already turns a fatal client error,
        # e.g. the broker came back empty while records were in flight, into ProduceError).
        raise ProduceError(
            f"could not write delivery outcomes to {topics.SLACK_RESPONSES} / "
            f"{topics.SLACK_MESSAGES_DLQ} ({type(exc).__name__}: {exc}); {BROKER_HINT}"
        ) from exc


def needs_delivery(settings: Settings, rng: OffsetRange, ledger: DeliveryLedger) -> bool:
    """Whether any record of ``rng`` still needs a delivery run.

    False only when every record parses and the ledger already holds it as delivered (e.g. an
    enrichment run delivered its own alerts inline). It reads the range from Kafka: not for a
    sensor tick (:func:`ranges_already_delivered` is). Never
    raises: a range it cannot judge (a record that breaks parsing or the ledger, a read error)
    needs a run, which dead-letters what is bad.
    """
    try:
        window = timedelta(hours=settings.dedup_window_hours)
        parsed = parse_records(read_messages(settings, [rng]))
        if parsed.dead_letters:
            return True
        known = ledger.duplicates(parsed.messages, window)  # one read per 500 alert ids
        return not all(claim is not None for claim in known)
    except Exception as exc:
        LOG.warning("range %s: cannot tell whether it was delivered (%s: %.300s); it needs a run",
                    rng, type(exc).__name__, exc)  # fmt: skip
        return True


def record_written(
    settings: Settings,
    written: Sequence[OffsetRange],
    messages: Sequence[tuple[bytes, bytes]],
    *,
    owner: str = "",
) -> bool:
    """Record which alerts ``written`` holds when it holds exactly ``messages`` (the
    ``(key, value)`` records an enrichment run produced there, no other producer's in between),
    so the delivery sensor can tell from the ledger that they were delivered (re-derived
    alerts, or alerts a backfill delivered again). Never raises; whether they were recorded."""
    written = [r for r in written if r.topic == topics.SLACK_MESSAGES]
    if not written or sum(r.size for r in written) != len(messages):
        return False
    try:
        records = [
            SourceRecord(topics.SLACK_MESSAGES, -1, -1, 0, key, value) for key, value in messages
        ]
        parsed = parse_records(records)
        if parsed.dead_letters:
            return False
        tid = current_topic_id(settings, topics.SLACK_MESSAGES)
        with WrittenAlerts(settings.effective_ledger_url) as table:
            table.record(written, parsed.messages, topic_id=tid, run_id=owner)
        return True
    except Exception as exc:
        LOG.warning("could not record which alerts were written where (%s: %.300s)",
                    type(exc).__name__, exc)  # fmt: skip
        return False


def ranges_already_delivered(
    settings: Settings, ranges: Sequence[OffsetRange], topic_id: str = ""
) -> set[OffsetRange]:
    """The ``slack-messages`` ranges (of the topic incarnation ``topic_id``; empty: the topic's
    current id, from the broker's metadata) a finished delivery recorded as handled, or whose
    recorded alerts (:mod:`alert_platform.delivery.written_alerts`) the ledger holds as
    delivered: from the ledger database alone, no record is read, so the delivery tail
    sensor's tick stays cheap whatever the records hold. Never raises: when the tables cannot
    be read, no range counts as delivered."""
    try:
        topic_ids = {rng.topic: topic_id for rng in ranges}
        for topic in topic_ids if not topic_id else ():
            topic_ids[topic] = current_topic_id(settings, topic)
        url = settings.effective_ledger_url
        window = timedelta(hours=settings.dedup_window_hours)
        out: set[OffsetRange] = set()
        with HandledRanges(url) as handled, WrittenAlerts(url) as written:
            for topic, tid in topic_ids.items():
                mine = [rng for rng in ranges if rng.topic == topic]
                out |= handled.handled(mine, topic_id=tid)
                rest = [rng for rng in mine if rng not in out]
                if rest:
                    with DeliveryLedger(url) as ledger:
                        out |= written.delivered(rest, ledger, window, topic_id=tid)
        return out
    except Exception as exc:
        LOG.warning("the handled ranges cannot be read (%s: %.300s); every range needs a run",
                    type(exc).__name__, exc)  # fmt: skip
        return set()
