"""One delivery run: read exact ``slack-messages`` ranges, post them, write the outcomes back.

Every attempt's outcome goes to ``slack-responses`` (keyed by alert id) and every message Slack
refuses for good to ``slack-messages-dlq``. Both are flushed before the run reports, also when
it fails, so nothing learned about Slack is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from slack_sdk import WebClient

from alert_platform import topics
from alert_platform.delivery.deliverer import DeliveryReport, deliver_batch, shared_pacer
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import parse_records
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import BROKER_HINT, OffsetRange
from alert_platform.kafka.reader import read_ranges
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer, ProduceError
from alert_platform.settings import Settings


@dataclass
class DeliveryRunReport:
    """What a delivery run read and what became of it."""

    ranges: list[OffsetRange]
    records_read: int = 0
    delivery: DeliveryReport | None = None
    responses_written: int = 0
    dead_letters_written: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """Flat figures for run metadata and logs."""
        counts = self.delivery.summary() if self.delivery is not None else {}
        return {
            "records_read": self.records_read,
            "responses_written": self.responses_written,
            "dead_letters_written": self.dead_letters_written,
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


def run_delivery(
    settings: Settings,
    client: WebClient,
    ranges: Sequence[OffsetRange],
    *,
    ledger: DeliveryLedger | None = None,
    owner: str | None = None,
    **deliver_options: Any,
) -> DeliveryRunReport:
    """Deliver the alerts in ``ranges`` exactly once; raise what ``deliver_batch`` raises.

    ``owner`` names this run's ledger claims (the Dagster run id, so ``explain`` can say which
    run delivered an alert); it applies when no ``ledger`` is passed (default: a fresh id).
    Pacing and lane threads come from ``settings`` (``SLACK_CHANNEL_RATE_PER_S``,
    ``SLACK_CHANNEL_BURST``, ``ALERT_PLATFORM_DELIVERY_WORKERS``) unless ``deliver_options``
    names a ``pacer`` / ``max_workers``.
    """
    if deliver_options.get("pacer") is None:
        deliver_options["pacer"] = shared_pacer(
            client.base_url, settings.slack_channel_rate_per_s, settings.slack_channel_burst
        )
    deliver_options.setdefault("max_workers", settings.delivery_max_workers)
    started = time.monotonic()
    report = DeliveryRunReport(list(ranges))
    records = read_messages(settings, ranges)
    report.records_read = len(records)
    own_ledger = ledger is None
    ledger = ledger or DeliveryLedger(settings.effective_ledger_url, owner=owner)
    out = BatchProducer.from_settings(settings)

    def on_response(record: dict[str, Any]) -> None:
        key = str(record["alert_id"]).encode()
        out.produce(topics.SLACK_RESPONSES, key, json.dumps(record, separators=(",", ":")))
        report.responses_written += 1

    try:
        report.delivery = deliver_batch(
            records,
            client,
            ledger,
            window=timedelta(hours=settings.dedup_window_hours),
            on_response=on_response,
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
        finally:
            if own_ledger:
                ledger.close()
            report.elapsed_s = time.monotonic() - started
    return report


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
    enrichment run delivered its own alerts inline), so a tail sensor can skip the range.
    """
    window = timedelta(hours=settings.dedup_window_hours)
    parsed = parse_records(read_messages(settings, [rng]))
    if parsed.dead_letters:
        return True
    known = ledger.duplicates(parsed.messages, window)  # one read per 500 alert ids
    return not all(claim is not None for claim in known)


def ranges_already_delivered(settings: Settings, ranges: Sequence[OffsetRange]) -> set[OffsetRange]:
    """The ``slack-messages`` ranges every record of which the ledger holds as delivered."""
    ledger = DeliveryLedger(settings.effective_ledger_url)
    try:
        return {rng for rng in ranges if not needs_delivery(settings, rng, ledger)}
    finally:
        ledger.close()
