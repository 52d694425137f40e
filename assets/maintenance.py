"""Retention of the platform's own state, hourly: ledger, run-index and outbox rows past the
de-duplication window plus ``ALERT_STATE_RETENTION_MARGIN_HOURS`` are pruned in short batches
(see :mod:`alert_platform.retention`); each materialization carries the counts pruned."""

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
)

from alert_platform.retention import DEFAULT_BATCH_SIZE, prune_state
from assets.resources import PlatformResource

STATE_RETENTION_JOB = "state_retention_job"
STATE_RETENTION_SCHEDULE = "state_retention_schedule"


@asset(
    name="platform_state_retention",
    group_name="maintenance",
    description=(
        "Prunes delivery-ledger rows (never 'sending' ones), run-index rows and responses-outbox "
        "rows older than the de-duplication window plus the retention margin, 1,000 rows per "
        "transaction; `explain` reports what was pruned up to when."
    ),
)
def platform_state_retention(
    context: AssetExecutionContext, platform: PlatformResource
) -> MaterializeResult:
    report = prune_state(platform.settings(), batch_size=DEFAULT_BATCH_SIZE)
    for note in report.notes:
        context.log.info(note)
    context.log.info(
        f"pruned {report.ledger} ledger, {report.run_index} run-index and "
        f"{report.outbox if report.outbox is not None else 'no'} outbox row(s) timed before "
        f"{report.before.isoformat()} in {report.batches} batch(es)"
    )
    metadata: dict[str, object] = {
        "pruned_before": MetadataValue.timestamp(report.before),
        "ledger_rows_pruned": report.ledger,
        "run_index_rows_pruned": report.run_index,
        "handled_ranges_pruned": report.handled_ranges,
        "batches": report.batches,
        "longest_batch_s": report.longest_batch_s,
        "seconds": report.seconds,
    }
    if report.outbox is not None:
        metadata["outbox_rows_pruned"] = report.outbox
    return MaterializeResult(metadata=metadata)  # type: ignore[arg-type]


state_retention_job = define_asset_job(
    STATE_RETENTION_JOB,
    selection=AssetSelection.assets(platform_state_retention),
    description="Prune the platform's own state (ledger, run index, outbox) past retention.",
)

state_retention_schedule = ScheduleDefinition(
    name=STATE_RETENTION_SCHEDULE,
    job=state_retention_job,
    cron_schedule="23 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Hourly: prune ledger, run-index and outbox rows past the retention window.",
)
