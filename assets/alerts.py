"""Alert assets: one per pipeline spec, hourly-partitioned by source-event time.

A run either reads the exact offset ranges a tail sensor handed it (live), or, with no ranges
(a backfill launched from the UI or the CLI), re-derives every alert of its partitions' time
window. Either way its output is the records it produced to ``slack-messages``.
"""

import os
from collections.abc import Mapping

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    Config,
    HourlyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from alert_platform import topics
from alert_platform.backfill import backfill_pipeline
from alert_platform.delivery.deliverer import DeliveryReport
from alert_platform.delivery.runner import run_delivery
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.pipelines.registry import PIPELINES
from alert_platform.pipelines.runner import EnrichmentReport, run_enrichment
from alert_platform.pipelines.spec import PipelineSpec
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from assets.lookup_tables import table_asset_key
from assets.resources import PlatformResource, SlackDeliveryResource
from assets.topics import topic_asset_key

GROUP = "alerts"
PARTITIONS_START = os.environ.get("ALERT_PLATFORM_PARTITIONS_START", "2026-11-01-00:00")

# end_offset=1: the current, still-open hour is a partition too (live runs are filed there).
HOURLY = HourlyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)


class OffsetRangeConfig(Config):
    """``[start, end)`` of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int


class AlertRunConfig(Config):
    """Set by the tail sensor; leave empty to backfill the selected partitions' time window."""

    ranges: list[OffsetRangeConfig] = Field(
        default_factory=list,
        description="Exact source offset ranges. Empty: re-derive the partition time window.",
    )


def alerts_asset_name(spec: PipelineSpec) -> str:
    return f"{spec.name}_alerts"


def _metadata(report: EnrichmentReport) -> dict[str, object]:
    figures = report.metadata()
    return {
        **{k: v for k, v in figures.items() if isinstance(v, int | float)},
        "source_ranges": MetadataValue.json(figures["source_ranges"]),
        "written_ranges": MetadataValue.json(figures["written_ranges"]),
        "table_rows": MetadataValue.json(figures["table_rows"]),
    }


def _deliver_inline(
    context: AssetExecutionContext,
    settings: Settings,
    slack: SlackDeliveryResource,
    report: EnrichmentReport,
) -> dict[str, object]:
    """Post the alerts this run just wrote, saving a sensor hop of latency.

    Exactly once all the same (the delivery ledger); whatever fails here is delivered by the
    ``slack_delivery_tail`` sensor, which skips ranges already delivered.
    """
    written = [r for r in report.written if r.topic == topics.SLACK_MESSAGES]
    if not written:
        return {}
    try:
        delivery = run_delivery(settings, slack.get_client(), written, owner=context.run.run_id)
    except Exception as exc:
        context.log.warning(f"inline delivery incomplete, the delivery sensor finishes it: {exc}")
        partial = getattr(exc, "report", None)  # the deliverer's errors carry what happened
        retries = partial.retries if isinstance(partial, DeliveryReport) else {}
        return {
            "inline_delivery": "incomplete",
            "inline_delivery_error": str(exc)[:500],
            **_inline_retries(retries),
        }
    summary = delivery.delivery.summary() if delivery.delivery else {}
    figures = {k: v for k, v in summary.items() if isinstance(v, int) and v}
    return {
        "inline_delivery": "done",
        **{f"inline_{k}": v for k, v in figures.items()},
        **_inline_retries(summary.get("retries") or {}),
    }


def _inline_retries(retries: Mapping[str, int]) -> dict[str, object]:
    """Slack retries by cause (``rate_limited``, ``server_error``, ``timeout``, ...)."""
    return {f"inline_retries_{cause}": n for cause, n in retries.items() if n}


def make_alerts_asset(spec: PipelineSpec) -> AssetsDefinition:
    """The asset that turns ``spec.source_topic`` records into ``slack-messages`` alerts."""
    tables = dict.fromkeys(join.table for join in spec.joins)

    @asset(
        name=alerts_asset_name(spec),
        partitions_def=HOURLY,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[topic_asset_key(spec.source_topic), *(table_asset_key(t) for t in tables)],
        group_name=GROUP,
        kinds={"kafka", "python"},
        description=spec.description or f"Alerts of pipeline `{spec.name}`.",
    )
    def _alerts(
        context: AssetExecutionContext,
        config: AlertRunConfig,
        platform: PlatformResource,
        slack: SlackDeliveryResource,
    ) -> MaterializeResult:
        settings = platform.settings()
        index = RunIndex(settings.effective_ledger_url)
        try:
            if config.ranges:
                ranges = [OffsetRange(**r.model_dump()) for r in config.ranges]
                report = run_enrichment(
                    settings, spec, ranges, run_id=context.run.run_id, index=index
                )
                extra: dict[str, object] = {"mode": "live"}
            else:
                window = context.partition_time_window
                report, ranges, method = backfill_pipeline(
                    settings, spec, window.start, window.end, run_id=context.run.run_id, index=index
                )
                extra = {
                    "mode": "backfill",
                    "window": f"{window.start.isoformat()} .. {window.end.isoformat()}",
                    "located_by": method,
                }
        finally:
            index.close()
        context.log.info(f"{spec.name}: {report.counts.as_dict()}")
        if settings.inline_delivery:
            extra.update(_deliver_inline(context, settings, slack, report))
        return MaterializeResult(metadata={**_metadata(report), **extra})

    return _alerts


ALERT_ASSETS = {name: make_alerts_asset(spec) for name, spec in PIPELINES.items()}
