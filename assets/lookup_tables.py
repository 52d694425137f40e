"""Lookup tables as assets: compacted topic -> latest value per key -> Parquet snapshot.

Each materialization loads the previous snapshot, catches it up to the topic's current end
(latest value per key wins, tombstones delete) and saves it. Enrichment runs read the snapshot
and catch up the rest themselves, so a stale snapshot costs time, never correctness.
"""

import time
from datetime import UTC, datetime

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import probe_end_offsets
from alert_platform.tables.snapshot import load_snapshot, read_snapshot_info
from alert_platform.tables.specs import CSDR_ASSIGNMENTS, TABLE_SPECS, TableSpec
from alert_platform.tables.topic_loader import refresh_snapshot
from assets.resources import PlatformResource
from assets.topics import topic_asset_key

GROUP = "lookup_tables"
# A snapshot this far behind its topic fails the freshness check (the refresh sensor should
# have caught it up within a tick or two).
MAX_LAG_RECORDS = 10_000
MAX_AGE_S = 3600


def table_asset_key(table: str) -> AssetKey:
    return AssetKey([table])


def make_table_asset(spec: TableSpec) -> AssetsDefinition:
    """The asset that refreshes ``spec``'s snapshot from its compacted topic."""

    @asset(
        name=spec.name,
        deps=[topic_asset_key(spec.topic)],
        group_name=GROUP,
        kinds={"kafka", "parquet"},
        description=(
            f"Latest `{spec.key_field}` -> row from compacted topic `{spec.topic}` "
            f"(columns: {', '.join(spec.columns)}), stored as a Parquet snapshot."
        ),
    )
    def _table(context: AssetExecutionContext, platform: PlatformResource) -> MaterializeResult:
        loaded = refresh_snapshot(platform.settings(), spec)
        for note in loaded.stats.notes:
            context.log.warning(note)
        for position, reason in loaded.stats.malformed[:20]:
            context.log.warning(f"malformed {spec.topic} record at {position}: {reason}")
        return MaterializeResult(
            metadata={
                "rows": len(loaded.table),
                "source_offsets": MetadataValue.json(
                    {str(p): o for p, o in sorted(loaded.offsets.items())}
                ),
                "records_read": loaded.stats.records,
                "upserts": loaded.stats.upserts,
                "tombstones": loaded.stats.deletes,
                "malformed": loaded.stats.malformed_count,
                "snapshot": MetadataValue.path(str(loaded.snapshot_path)),
                "catch_up_s": round(loaded.stats.seconds, 3),
            }
        )

    return _table


def make_freshness_check(spec: TableSpec) -> AssetChecksDefinition:
    """The snapshot is at most ``MAX_LAG_RECORDS`` behind its topic or younger than an hour."""

    @asset_check(
        asset=table_asset_key(spec.name),
        name=f"{spec.name}_is_fresh",
        description=f"The snapshot is close to the end of `{spec.topic}`.",
    )
    def _fresh(platform: PlatformResource) -> AssetCheckResult:
        settings = platform.settings()
        info = read_snapshot_info(spec.snapshot_path(settings.snapshot_dir))
        if info is None:
            return AssetCheckResult(passed=False, metadata={"reason": "no snapshot yet"})
        consumer = make_consumer(settings)
        try:
            ends = probe_end_offsets(consumer, spec.topic)
        finally:
            consumer.close()
        lag = sum(max(0, end - info.offsets.get(p, 0)) for p, end in ends.items())
        created = datetime.fromisoformat(info.created_at.replace("Z", "+00:00"))
        age_s = time.time() - created.astimezone(UTC).timestamp()
        return AssetCheckResult(
            passed=lag <= MAX_LAG_RECORDS or age_s <= MAX_AGE_S,
            severity=AssetCheckSeverity.WARN,
            metadata={"lag_records": lag, "age_s": round(age_s, 1), "rows": info.rows},
        )

    return _fresh


@asset_check(
    asset=table_asset_key(CSDR_ASSIGNMENTS.name),
    description="Every assignment names the account-team member's email (the Slack join key).",
)
def assignments_have_email(platform: PlatformResource) -> AssetCheckResult:
    settings = platform.settings()
    table, _ = load_snapshot(
        CSDR_ASSIGNMENTS.snapshot_path(settings.snapshot_dir), CSDR_ASSIGNMENTS
    )
    emails = table.to_columns()["csdr_email"]
    missing = sum(1 for email in emails if not email)
    return AssetCheckResult(
        passed=missing == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={"rows": len(table), "without_email": missing},
    )


TABLE_ASSETS = [make_table_asset(spec) for spec in TABLE_SPECS.values()]
TABLE_CHECKS = [make_freshness_check(spec) for spec in TABLE_SPECS.values()] + [
    assignments_have_email
]
