"""The catch-up delivery asset: ``slack-messages`` ranges no enrichment run finished
delivering (all of them with ALERT_PLATFORM_INLINE_DELIVERY=false), posted exactly once."""

from dagster import (
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
from alert_platform.delivery.runner import run_delivery
from alert_platform.kafka.offsets import OffsetRange
from assets.alerts import OffsetRangeConfig
from assets.delivery_results import (
    NO_PERMANENT_FAILURES,
    delivery_metadata,
    log_outcomes,
    no_permanent_failures,
)
from assets.resources import (
    DeliveryLedgerResource,
    KafkaProducerResource,
    PlatformResource,
    SlackDeliveryResource,
)
from assets.topics import topic_asset_key

NAME = "slack_deliveries"
__all__ = ["NAME", "NO_PERMANENT_FAILURES", "DeliveryRunConfig", "slack_deliveries"]


class DeliveryRunConfig(Config):
    """Set by the delivery sensor: the ``slack-messages`` ranges to deliver."""

    ranges: list[OffsetRangeConfig] = Field(default_factory=list)


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
    kafka: KafkaProducerResource,
    ledger: DeliveryLedgerResource,
) -> MaterializeResult:
    ranges = [OffsetRange(**r.model_dump()) for r in config.ranges]
    try:
        # The run id owns the ledger claims: `alert-platform explain` names the delivering run.
        report = run_delivery(
            platform.settings(),
            slack.get_client(),
            ranges,
            owner=context.run.run_id,
            ledger=ledger.get_ledger(),
            producer=kafka.get_producer(),
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
    dead = list(report.delivery.dead_letters) if report.delivery else []
    log_outcomes(context, report.stale, dead)
    return MaterializeResult(
        metadata=delivery_metadata(report), check_results=[no_permanent_failures(dead)]
    )
