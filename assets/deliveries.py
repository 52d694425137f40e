"""The delivery asset: ``slack-messages`` ranges posted to Slack exactly once."""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from alert_platform import topics
from alert_platform.delivery.deliverer import DeliveryIncompleteError, SlackAuthError
from alert_platform.delivery.runner import DeliveryRunReport, run_delivery
from alert_platform.kafka.offsets import OffsetRange
from assets.alerts import OffsetRangeConfig
from assets.resources import PlatformResource, SlackDeliveryResource
from assets.topics import topic_asset_key

NAME = "slack_deliveries"
NO_PERMANENT_FAILURES = "no_permanent_failures"


class DeliveryRunConfig(Config):
    """Set by the delivery sensor: the ``slack-messages`` ranges to deliver."""

    ranges: list[OffsetRangeConfig] = Field(default_factory=list)


def _metadata(report: DeliveryRunReport) -> dict[str, object]:
    figures = report.metadata()
    flat = {k: v for k, v in figures.items() if isinstance(v, int | float)}
    return {
        **flat,
        "offset_ranges": MetadataValue.json(figures["offset_ranges"]),
        "retries": MetadataValue.json(figures.get("retries", {})),
    }


@asset(
    name=NAME,
    deps=[topic_asset_key(topics.SLACK_MESSAGES)],
    group_name="delivery",
    kinds={"slack"},
    description=(
        "Alerts from `slack-messages` posted with chat.postMessage, each exactly once (delivery "
        "ledger); outcomes to `slack-responses` (at least once, via the outbox), permanent "
        "failures to `slack-messages-dlq`; alerts older than the maximum age are 'stale', not "
        "posted (metadata `stale`)."
    ),
    check_specs=[AssetCheckSpec(NO_PERMANENT_FAILURES, asset=NAME)],
)
def slack_deliveries(
    context: AssetExecutionContext,
    config: DeliveryRunConfig,
    platform: PlatformResource,
    slack: SlackDeliveryResource,
) -> MaterializeResult:
    ranges = [OffsetRange(**r.model_dump()) for r in config.ranges]
    try:
        # The run id owns the ledger claims: `alert-platform explain` names the delivering run.
        report = run_delivery(
            platform.settings(), slack.get_client(), ranges, owner=context.run.run_id
        )
    except SlackAuthError as exc:
        raise Failure(
            description=f"{exc} Nothing more was posted; this range is retried once fixed.",
            allow_retries=False,
        ) from None
    except DeliveryIncompleteError as exc:
        raise Failure(
            description=f"Delivery incomplete, the range will be retried: {exc}",
            metadata={"summary": MetadataValue.json(exc.report.summary())},
        ) from None
    dead = report.delivery.dead_letters if report.delivery else []
    if report.stale:
        context.log.warning(
            f"{report.stale} alert(s) older than the maximum alert age were not posted "
            "(outcome 'stale'); an explicit backfill posts them"
        )
    for letter in dead[:20]:
        context.log.warning(f"dead-lettered {letter.alert_id} ({letter.channel}): {letter.error}")
    return MaterializeResult(
        metadata=_metadata(report),
        check_results=[
            AssetCheckResult(
                check_name=NO_PERMANENT_FAILURES,
                passed=not dead,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "dead_lettered": len(dead),
                    "errors": MetadataValue.json(sorted({d.error for d in dead})),
                },
            )
        ],
    )
