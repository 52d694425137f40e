"""The delivery stream's processor: a micro-batch of ``slack-messages`` -> Slack, exactly once.

Each batch goes through :func:`~alert_platform.delivery.runner.run_delivery` with the records
in hand (no second read): the same ledger, outbox, ``slack-responses`` and DLQ as a delivery
run. The batch holds every record of its ranges, so a finished batch records its ranges as
handled (the delivery sensor's catch-up then skips them). A batch with messages left for later
(a claim of another worker still within its lease, Slack unreachable) raises, so it is not
committed and is tried again; what it did post is a duplicate the next time. The loop's stop
event reaches the batch (:meth:`DeliveryProcessor.bind_stop`): a draining worker finishes the
send in flight and leaves the rest of a paced batch uncommitted, instead of posting it all at
Slack's pace first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from slack_sdk import WebClient

from alert_platform.delivery.deliverer import DeliveryIncompleteError
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.outbox import Outbox
from alert_platform.delivery.runner import DeliveryRunReport, finished, run_delivery
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer
from alert_platform.settings import Settings
from alert_platform.stream.loop import batch_ranges


class BatchNotFinished(RuntimeError):
    """Some messages of the batch have no final outcome yet: the batch is tried again."""


class DeliveryProcessor:
    """Post micro-batches of ``slack-messages`` through ``client`` with ``ledger``."""

    def __init__(
        self,
        settings: Settings,
        client: WebClient,
        ledger: DeliveryLedger,
        outbox: Outbox,
        producer: BatchProducer,
        *,
        owner: str,
        topic_ids: Mapping[str, str] | None = None,
        **deliver_options: Any,
    ) -> None:
        self.settings = settings
        self.client = client
        self.ledger = ledger
        self.outbox = outbox
        self.producer = producer
        self.owner = owner
        self.topic_ids = dict(topic_ids or {})
        self.deliver_options = deliver_options
        self.last_report: DeliveryRunReport | None = None
        self.stop: threading.Event | None = None
        self.dm_cache: dict[str, str] = {}  # user -> DM id, across this worker's batches

    def bind_stop(self, stop: threading.Event) -> None:
        """The loop's stop event: a batch in hand ends early when it is set (a drain)."""
        self.stop = stop

    def process(self, records: Sequence[SourceRecord]) -> int:
        try:
            report = run_delivery(
                self.settings,
                self.client,
                batch_ranges(records),
                ledger=self.ledger,
                owner=self.owner,
                outbox=self.outbox,
                producer=self.producer,
                records=records,
                topic_ids=self.topic_ids,
                stop=self.stop,
                dm_cache=self.dm_cache,
                **self.deliver_options,
            )
        except DeliveryIncompleteError as exc:
            raise BatchNotFinished(f"delivery left messages for a later attempt: {exc}") from exc
        self.last_report = report
        if not finished(report):
            raise BatchNotFinished("delivery left messages for a later attempt")
        delivery = report.delivery
        return 0 if delivery is None else delivery.delivered
