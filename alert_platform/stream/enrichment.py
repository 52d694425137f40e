"""The enrichment stream's processor: a micro-batch of a source topic -> ``slack-messages``.

The same engine, specs and render options as the batch runs (``enrich_batch`` per pipeline
reading the topic), the same outputs: alerts keyed by alert id to ``slack-messages``, records
that cannot be processed to ``alerts-dlq`` with the reason. The batch returns once the
producer's flush confirmed every record; the range is then recorded in the run index (run id
``stream:<member>``) so ``explain`` and the backfills see what the stream processed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from operator import attrgetter

from alert_platform import topics
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer
from alert_platform.pipelines.engine import encode_dead_letter, enrich_batch
from alert_platform.pipelines.spec import PipelineSpec, RenderOptions
from alert_platform.run_index import ProcessedRange, RunIndex
from alert_platform.stream.loop import batch_ranges
from alert_platform.stream.tables import TableFollower

LOG = logging.getLogger("alert_platform.stream.enrichment")

_key_value = attrgetter("key", "value")  # of an Alert

# How often the followed table topics' ids are compared with those they were loaded from.
TOPIC_ID_CHECK_S = 60.0


class EnrichmentProcessor:
    """Enrich micro-batches with ``specs`` (all reading one topic) against ``tables``."""

    def __init__(
        self,
        specs: Sequence[PipelineSpec],
        tables: TableFollower,
        producer: BatchProducer,
        options: RenderOptions,
        *,
        index: RunIndex | None = None,
        run_id: str = "stream",
        reload_tables: Callable[[], TableFollower] | None = None,
        table_ids: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        """``reload_tables`` builds a fresh follower (a table topic was recreated, as told by
        ``table_ids``: the current id per table topic)."""
        self.specs = list(specs)
        self.tables = tables
        self.producer = producer
        self.options = options
        self.index = index
        self.run_id = run_id
        self._reload = reload_tables
        self._table_ids = table_ids
        self._known_ids = table_ids() if table_ids is not None else {}
        self._ids_checked = time.monotonic()

    def process(self, records: Sequence[SourceRecord]) -> int:
        self._check_table_topics()
        self.tables.sync()
        lookups = self.tables.lookups()
        out = self.producer
        alerts = 0
        per_spec: list[tuple[PipelineSpec, Counter[int]]] = []
        for spec in self.specs:
            result = enrich_batch(spec, records, lookups, self.options)
            out.produce_many(topics.SLACK_MESSAGES, map(_key_value, result.alerts))
            for dead in result.dead_letters:
                message = encode_dead_letter(dead)
                out.produce(topics.ALERTS_DLQ, message.key, message.value, message.headers)
            alerts += result.counts.alerts
            per_spec.append((spec, Counter(a.source.partition for a in result.alerts)))
        out.flush()  # raises ProduceError: the batch is retried, nothing committed
        self._index(records, per_spec)
        return alerts

    def _index(
        self, records: Sequence[SourceRecord], per_spec: list[tuple[PipelineSpec, Counter[int]]]
    ) -> None:
        if self.index is None:
            return
        try:
            rows: list[ProcessedRange] = []
            for rng in batch_ranges(records):
                mine = [r.timestamp_ms for r in records if r.partition == rng.partition]
                for spec, alerts in per_spec:
                    rows.append(
                        ProcessedRange(spec.name, rng, min(mine), max(mine), len(mine),
                                       alerts[rng.partition], self.run_id)
                    )  # fmt: skip
            self.index.record_many(rows)
        except Exception as exc:  # the alerts are out: only explain loses this batch's row
            LOG.warning("could not record the batch in the run index: %s", exc)

    def _check_table_topics(self) -> None:
        if self._table_ids is None or self._reload is None:
            return
        if time.monotonic() - self._ids_checked < TOPIC_ID_CHECK_S:
            return
        self._ids_checked = time.monotonic()
        current = self._table_ids()
        changed = [
            t for t, tid in current.items() if tid and self._known_ids.get(t, "") not in ("", tid)
        ]
        if changed:
            LOG.warning("lookup table topic(s) %s were recreated: reloading the tables", changed)
            self.tables.close()
            self.tables = self._reload()
        self._known_ids.update({t: tid for t, tid in current.items() if tid})

    def close(self) -> None:
        self.tables.close()
