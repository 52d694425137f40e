"""What a delivery materialization shows: its metadata, its ``no_permanent_failures`` check,
and the inline delivery of an enrichment run's own alerts (the ``<pipeline>_deliveries`` output
of the alerts multi-asset).

Both delivery assets (``slack_deliveries``, the catch-up, and each ``<pipeline>_deliveries``)
record the same figures, so a materialization's counts are what Slack received from that run.
"""

from collections.abc import Mapping, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
)
from slack_sdk import WebClient

from alert_platform import topics
from alert_platform.backfill import count_stale_posted
from alert_platform.delivery.deliverer import DeliveryReport
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import DeadLetter
from alert_platform.delivery.runner import DeliveryRunReport, run_delivery
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.kafka.writer import BatchProducer
from alert_platform.settings import Settings

NO_PERMANENT_FAILURES = "no_permanent_failures"


def delivery_metadata(report: DeliveryRunReport) -> dict[str, object]:
    """The run's figures: numbers flat, ``offset_ranges`` and ``retries`` as JSON."""
    figures = report.metadata()
    flat = {k: v for k, v in figures.items() if isinstance(v, int | float)}
    return {
        **flat,
        "offset_ranges": MetadataValue.json(figures["offset_ranges"]),
        "retries": MetadataValue.json(figures.get("retries", {})),
    }


def no_permanent_failures(
    dead: Sequence[DeadLetter], asset_key: AssetKey | None = None
) -> AssetCheckResult:
    """Green when Slack refused no alert for good (else the count and the distinct errors)."""
    return AssetCheckResult(
        check_name=NO_PERMANENT_FAILURES,
        asset_key=asset_key,
        passed=not dead,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "dead_lettered": len(dead),
            "errors": MetadataValue.json(sorted({d.error for d in dead})),
        },
    )


def log_outcomes(context: AssetExecutionContext, stale: int, dead: Sequence[DeadLetter]) -> None:
    """Warn about the alerts not posted (stale) and the first dead letters."""
    if stale:
        context.log.warning(
            f"{stale} alert(s) older than the maximum alert age were not posted "
            "(outcome 'stale'); an explicit backfill posts them"
        )
    for letter in dead[:20]:
        context.log.warning(f"dead-lettered {letter.alert_id} ({letter.channel}): {letter.error}")


def _retries(retries: Mapping[str, int]) -> dict[str, object]:
    return {"retries": MetadataValue.json({cause: n for cause, n in retries.items() if n})}


def deliver_inline(
    context: AssetExecutionContext,
    settings: Settings,
    client: WebClient,
    written: Sequence[OffsetRange],
    *,
    allow_stale: bool = False,
    ledger: DeliveryLedger | None = None,
    producer: BatchProducer | None = None,
) -> tuple[dict[str, object], list[DeadLetter]]:
    """Post the alerts an enrichment run just wrote (its ``slack-messages`` ranges, read once);
    ``(metadata, dead letters)`` of the ``<pipeline>_deliveries`` materialization.

    Exactly once all the same (the delivery ledger). Never raises: what fails here is delivered
    by the ``slack_delivery_tail`` sensor's catch-up run (the ranges are recorded as handled
    only when every record was finished). ``allow_stale`` (backfill runs only) posts alerts
    older than the maximum alert age too (counted as ``stale_posted``). ``ledger`` and
    ``producer``: the run's (default: the delivery makes its own).
    """
    written = [r for r in written if r.topic == topics.SLACK_MESSAGES]
    if not written:  # no alerts: nothing to read, post or write back
        empty = {"records_read": 0, "delivered": 0, "offset_ranges": MetadataValue.json([])}
        return {"inline_delivery": "done", **empty}, []
    try:
        report = run_delivery(
            settings,
            client,
            written,
            owner=context.run.run_id,
            allow_stale=allow_stale,
            ledger=ledger,
            producer=producer,
        )
    except Exception as exc:
        context.log.warning(f"inline delivery incomplete, the delivery sensor finishes it: {exc}")
        partial = getattr(exc, "report", None)  # the deliverer's errors carry what happened
        metadata: dict[str, object] = {
            "inline_delivery": "incomplete",
            "inline_delivery_error": str(exc)[:500],
            "offset_ranges": MetadataValue.json([str(r) for r in written]),
        }
        if not isinstance(partial, DeliveryReport):
            return metadata, []
        summary = partial.summary()
        metadata.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
        metadata.update(_retries(summary.get("retries") or {}))
        return metadata, list(partial.dead_letters)
    metadata = {"inline_delivery": "done", **delivery_metadata(report)}
    if allow_stale and report.delivery is not None:
        try:
            metadata["stale_posted"] = count_stale_posted(settings, written, report.delivery)
        except Exception as exc:  # a count for the summary must not fail a delivered run
            context.log.warning(f"cannot count the stale alerts posted: {exc}")
    dead = list(report.delivery.dead_letters) if report.delivery else []
    log_outcomes(context, report.stale, dead)
    return metadata, dead
