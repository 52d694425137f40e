"""Alert assets: one multi-asset per pipeline spec, hourly-partitioned by source-event time.

Each materializes ``<pipeline>_alerts`` (the records it produced to ``slack-messages``) and,
when it delivers them itself, ``<pipeline>_deliveries`` (what Slack received from the run, with
its ``no_permanent_failures`` check): lineage topic -> tables -> alerts -> deliveries. A run
either reads the exact offset ranges a tail sensor handed it (live), or, with no ranges (a
backfill launched from the UI or the CLI), re-derives every alert of its partitions' time
window.

Offsets that retention deleted before they were read (handed over by the sensor in ``lost``, or
found by the reader) do not fail the run: they are counted (metadata ``lost_offsets`` and
``lost_ranges``), turn the asset check ``no_retention_gaps`` red, and each gap posts one ops
notice. Inline delivery of a live run posts nothing older than the maximum alert age (outcome
``stale``); a live run with ALERT_PLATFORM_INLINE_DELIVERY off skips the deliveries output
(the ``slack_deliveries`` catch-up delivers); a backfill run always delivers inline, posts the
stale alerts too and counts them (``stale_posted`` on the deliveries materialization).
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)
from pydantic import Field

from alert_platform.alert_partitions import alert_partitions_start
from alert_platform.backfill import backfill_pipeline
from alert_platform.delivery.runner import record_written
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.pipelines.registry import PIPELINES
from alert_platform.pipelines.runner import EnrichmentReport, run_enrichment
from alert_platform.pipelines.spec import PipelineSpec
from alert_platform.retention_gaps import notify_gaps
from alert_platform.run_index import RunIndex
from assets.delivery_results import NO_PERMANENT_FAILURES, deliver_inline, no_permanent_failures
from assets.lookup_tables import table_asset_key
from assets.partitions import ALERT_PARTITIONS
from assets.resources import (
    DeliveryLedgerResource,
    KafkaProducerResource,
    PlatformResource,
    SlackDeliveryResource,
)
from assets.topics import topic_asset_key

GROUP = "alerts"
NO_RETENTION_GAPS = "no_retention_gaps"
PARTITIONS_START = alert_partitions_start()
# With inline delivery off, a live run that wrote at most this many alerts records which alerts
# went where (the delivery sensor then tells from the ledger which ranges need no run).
KEEP_MESSAGES = 2_000

# end_offset=1: the current, still-open hour is a partition too (live runs are filed there).
HOURLY = ALERT_PARTITIONS


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
    lost: list[OffsetRangeConfig] = Field(
        default_factory=list,
        description="Offsets before the ranges that retention deleted unread (set by the sensor).",
    )


def alerts_asset_name(spec: PipelineSpec) -> str:
    """The alerts asset's name, also the op name of the pipeline's multi-asset (run config)."""
    return f"{spec.name}_alerts"


def deliveries_asset_name(spec: PipelineSpec) -> str:
    """The asset of what the pipeline's runs delivered inline."""
    return f"{spec.name}_deliveries"


def _metadata(report: EnrichmentReport) -> dict[str, object]:
    figures = report.metadata()
    return {
        **{k: v for k, v in figures.items() if isinstance(v, int | float)},
        "source_ranges": MetadataValue.json(figures["source_ranges"]),
        "lost_ranges": MetadataValue.json(figures["lost_ranges"]),
        "written_ranges": MetadataValue.json(figures["written_ranges"]),
        "table_rows": MetadataValue.json(figures["table_rows"]),
    }


def _gap_check(report: EnrichmentReport, asset_key: AssetKey) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=NO_RETENTION_GAPS,
        asset_key=asset_key,
        passed=not report.lost_offsets,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"{report.lost_offsets} source offset(s) deleted by retention before they were read"
            if report.lost_offsets
            else "every source offset handed to the run was read"
        ),
        metadata={
            "lost_offsets": report.lost_offsets,
            "lost_ranges": MetadataValue.json([str(r) for r in report.lost]),
        },
    )


def make_alerts_asset(spec: PipelineSpec) -> AssetsDefinition:
    """The multi-asset that turns ``spec.source_topic`` records into ``slack-messages`` alerts
    (``<pipeline>_alerts``) and delivers them (``<pipeline>_deliveries``, skippable)."""
    tables = dict.fromkeys(join.table for join in spec.joins)
    alerts_key = AssetKey(alerts_asset_name(spec))
    deliveries_key = AssetKey(deliveries_asset_name(spec))

    @multi_asset(
        name=alerts_asset_name(spec),
        partitions_def=HOURLY,
        backfill_policy=BackfillPolicy.single_run(),
        can_subset=True,  # the deliveries output (and its check) may be skipped
        specs=[
            AssetSpec(
                alerts_key,
                deps=[topic_asset_key(spec.source_topic), *(table_asset_key(t) for t in tables)],
                group_name=GROUP,
                kinds={"kafka", "python"},
                description=spec.description or f"Alerts of pipeline `{spec.name}`.",
            ),
            AssetSpec(
                deliveries_key,
                deps=[alerts_key],
                group_name="delivery",
                kinds={"slack"},
                skippable=True,
                description=(
                    f"The alerts of `{spec.name}` runs posted to Slack by the run itself "
                    "(inline delivery), each exactly once (delivery ledger); not materialized "
                    "by a live run with ALERT_PLATFORM_INLINE_DELIVERY=false (then "
                    "`slack_deliveries` delivers them)."
                ),
            ),
        ],
        check_specs=[
            AssetCheckSpec(
                NO_RETENTION_GAPS,
                asset=alerts_key,
                description="The run read every source offset it was handed: none had been "
                "deleted by retention first (else: lost_offsets, an ops notice per gap).",
            ),
            AssetCheckSpec(
                NO_PERMANENT_FAILURES,
                asset=deliveries_key,
                description="Slack refused none of the run's alerts for good.",
            ),
        ],
    )
    def _alerts(
        context: AssetExecutionContext,
        config: AlertRunConfig,
        platform: PlatformResource,
        slack: SlackDeliveryResource,
        kafka: KafkaProducerResource,
        ledger: DeliveryLedgerResource,
    ) -> Iterator[MaterializeResult]:
        selected = context.selected_asset_keys
        if alerts_key not in selected:
            raise Failure(
                f"{deliveries_key.to_user_string()} is materialized with "
                f"{alerts_key.to_user_string()} (the run delivers the alerts it derives): "
                "select both"
            )
        settings = platform.settings()
        index = RunIndex(settings.effective_ledger_url)
        try:
            if config.ranges:
                ranges = [OffsetRange(**r.model_dump()) for r in config.ranges]
                lost = [OffsetRange(**r.model_dump()) for r in config.lost]
                report = run_enrichment(
                    settings,
                    spec,
                    ranges,
                    run_id=context.run.run_id,
                    index=index,
                    lost=lost,
                    keep_messages=0 if settings.inline_delivery else KEEP_MESSAGES,
                    producer=kafka.get_producer(),
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
        if report.lost:
            context.log.error(
                f"{spec.name}: {report.lost_offsets} offset(s) deleted by retention before they "
                f"were read: {', '.join(map(str, report.lost))}"
            )
            where = f"pipeline {spec.name}"
            extra["ops_notices_posted"] = notify_gaps(settings, report.lost, where)
        # A backfill always delivers its own alerts: only it may post those older than the
        # maximum alert age (the delivery sensor would mark them stale).
        backfill = extra["mode"] == "backfill"
        deliver = deliveries_key in selected and (settings.inline_delivery or backfill)
        if not deliver and report.messages is not None:
            # Which alerts went where: the delivery sensor tells delivered ones from the ledger.
            extra["written_alerts_recorded"] = record_written(
                settings, report.written, report.messages, owner=context.run.run_id
            )
        yield MaterializeResult(
            asset_key=alerts_key,
            metadata={**_metadata(report), **extra},
            check_results=[_gap_check(report, alerts_key)],
        )
        if not deliver:
            if backfill and deliveries_key not in selected:
                context.log.warning(
                    f"{deliveries_key.to_user_string()} was not selected: this backfill posts "
                    "nothing itself; slack_delivery_tail delivers its alerts, and marks those "
                    "older than ALERT_MAX_AGE_HOURS stale. Select both assets to post them all."
                )
            else:
                context.log.info(
                    f"{deliveries_key.to_user_string()} skipped: the slack_delivery_tail "
                    "catch-up delivers these alerts"
                )
            return
        metadata, dead = deliver_inline(
            context,
            settings,
            slack.get_client(),
            report.written,
            allow_stale=backfill,
            ledger=ledger.get_ledger(),
            producer=kafka.get_producer(),
        )
        yield MaterializeResult(
            asset_key=deliveries_key,
            metadata={**metadata, "mode": extra["mode"]},
            check_results=[no_permanent_failures(dead, deliveries_key)],
        )

    return _alerts


ALERT_ASSETS = {name: make_alerts_asset(spec) for name, spec in PIPELINES.items()}
