"""The onboarding-started producer: BigQuery ``accounts`` -> ``onboarding-events``, one day per
partition (see docs/onboarding.md).

Each partition is a UTC day; a run queries the accounts whose onboarding started that day and
produces one event per account. Re-running a day re-produces the same event ids, so the alerts
derived from them are suppressed by the delivery ledger: any day, today included, can be
(re-)run by hand from the UI.

The schedule fires daily at 06:00 UTC for the *previous* day, the latest complete one.
``build_schedule_from_partitioned_job`` would request the last partition, which with
``end_offset=1`` is today's: a run at 06:00 would see only the accounts that started before
06:00, and the day would never be produced again (the schedule's run key is the day).
"""

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    AssetSpec,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleEvaluationContext,
    asset,
    define_asset_job,
    schedule,
)

from alert_platform import topics
from alert_platform.bigquery.tables import ACCOUNTS_TABLE
from alert_platform.settings import ConfigError, Settings
from assets.resources import BigQueryClientResource, KafkaProducerResource, PlatformResource

if TYPE_CHECKING:
    from alert_platform.bigquery.onboarding import OnboardingReport

NAME = "onboarding_started_events"
JOB_NAME = "onboarding_producer_job"
SCHEDULE_NAME = "onboarding_producer_schedule"
GROUP = "onboarding"
PARTITIONS_START = Settings.from_env().onboarding_start  # ALERT_PLATFORM_ONBOARDING_START
SCHEDULE_HOUR_UTC = 6
# How many rejected rows are listed in the run metadata (the count is always complete).
REJECTED_SHOWN = 20

# end_offset=1: today is a partition too, so the current day can be run by hand.
DAILY = DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1, timezone="UTC")

WAREHOUSE_ACCOUNTS_KEY = AssetKey(["bigquery", "warehouse_accounts"])

warehouse_accounts = AssetSpec(
    key=WAREHOUSE_ACCOUNTS_KEY,
    description=(
        f"BigQuery table `BIGQUERY_PROJECT.BIGQUERY_DATASET.{ACCOUNTS_TABLE}`: one row per "
        "account and onboarding start (Salesforce account id, org id, plan, region, CSDR e-mail, "
        "onboarding_started_at, is_test). Maintained outside this platform."
    ),
    group_name=GROUP,
    kinds={"bigquery"},
    metadata={"table": ACCOUNTS_TABLE},
)


def _metadata(report: "OnboardingReport") -> dict[str, object]:
    rejected = [{"row": row, "reason": reason} for row, reason in report.rejected]
    return {
        "day": report.day.isoformat(),
        "topic": report.topic,
        "rows": report.rows,
        "produced": report.produced,
        "rejected": len(report.rejected),
        "rejected_rows": MetadataValue.json(rejected[:REJECTED_SHOWN]),
        "query_job_id": MetadataValue.text(report.query_job_id or ""),
        "bytes_processed": report.bytes_processed or 0,
        "event_ids": len(report.event_ids),
    }


@asset(
    name=NAME,
    partitions_def=DAILY,
    deps=[WAREHOUSE_ACCOUNTS_KEY],
    group_name=GROUP,
    kinds={"bigquery", "kafka"},
    description=(
        "Accounts whose onboarding started on the partition's day (UTC), queried from BigQuery "
        f"and produced to `{topics.ONBOARDING_EVENTS}` as `onboarding.started` events (one per "
        "account, deterministic ids: re-running a day is safe)."
    ),
)
def onboarding_started_events(
    context: AssetExecutionContext,
    platform: PlatformResource,
    bigquery: BigQueryClientResource,
    kafka: KafkaProducerResource,
) -> MaterializeResult:
    # Imported here: the BigQuery client costs ~1 s to import, and every run process (alert and
    # delivery runs too) imports these definitions.
    from alert_platform.bigquery.onboarding import (
        OnboardingDeliveryError,
        OnboardingQueryError,
        produce_onboarding_events,
    )

    day = context.partition_key
    try:
        try:
            client = bigquery.get_client()
        except ConfigError:
            raise
        except Exception:  # left to the producer entry, which reports it as a query failure
            client = None
        report = produce_onboarding_events(
            platform.settings(), day, client=client, producer=kafka.get_producer()
        )
    except OnboardingQueryError as exc:
        raise Failure(
            description=f"BigQuery onboarding query for {day} failed: {exc.message}"
            + (f"; {exc.hint}" if exc.hint else ""),
            metadata={
                "job_id": MetadataValue.text(exc.job_id or ""),
                "code": int(exc.code) if exc.code is not None else 0,  # HTTPStatus -> int
                "errors": MetadataValue.json(exc.errors),
            },
        ) from exc
    except OnboardingDeliveryError as exc:
        raise Failure(
            description=f"Producing onboarding events for {day} failed: {exc}",
            metadata={"undelivered": exc.undelivered, "failed": len(exc.failures)},
        ) from exc
    except ConfigError as exc:
        raise Failure(description=f"Onboarding producer misconfigured: {exc}") from exc
    context.log.info(
        f"{day}: {report.rows} row(s), {report.produced} event(s) produced to {report.topic}, "
        f"{len(report.rejected)} rejected (query job {report.query_job_id})"
    )
    if report.rejected:
        shown = "; ".join(f"{row}: {reason}" for row, reason in report.rejected[:5])
        context.log.warning(f"{day}: {len(report.rejected)} row(s) rejected: {shown}")
    return MaterializeResult(metadata=_metadata(report))


onboarding_producer_job = define_asset_job(
    JOB_NAME,
    selection=AssetSelection.assets(onboarding_started_events),
    description=(
        f"Produce one day's onboarding-started events from BigQuery to "
        f"`{topics.ONBOARDING_EVENTS}` (partition = UTC day)."
    ),
)


def previous_day(moment: datetime) -> str:
    """The partition key of the UTC day before ``moment`` (the latest complete day)."""
    return (moment.astimezone(UTC).date() - timedelta(days=1)).isoformat()


@schedule(
    name=SCHEDULE_NAME,
    job=onboarding_producer_job,
    cron_schedule=f"0 {SCHEDULE_HOUR_UTC} * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description=(
        f"Daily at {SCHEDULE_HOUR_UTC:02d}:00 UTC: produce the previous (complete) day's "
        "onboarding-started events. Any other day: materialize its partition by hand."
    ),
)
def onboarding_producer_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    day = previous_day(context.scheduled_execution_time or datetime.now(UTC))
    return RunRequest(run_key=day, partition_key=day)
