"""Re-materialize a lookup table whenever its compacted topic has moved past its snapshot."""

import hashlib
import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import probe_end_offsets
from alert_platform.tables.snapshot import read_snapshot_info
from alert_platform.tables.specs import TABLE_SPECS
from assets.lookup_tables import table_asset_key
from assets.resources import PlatformResource
from sensors.topic_tail import SOURCE_TAG

LOOKUP_TABLES_JOB = "lookup_tables_job"


def make_table_refresh_sensor(minimum_interval_seconds: int = 10) -> SensorDefinition:
    """One sensor for every table: a run per table whose topic end differs from its snapshot."""

    @sensor(
        name="lookup_table_refresh",
        job_name=LOOKUP_TABLES_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Refreshes a lookup-table snapshot when its compacted topic moves.",
    )
    def _refresh(context: SensorEvaluationContext, platform: PlatformResource) -> SensorResult:
        settings = platform.settings()
        requests = []
        consumer = make_consumer(settings)
        try:
            for spec in TABLE_SPECS.values():
                ends = probe_end_offsets(consumer, spec.topic)
                info = read_snapshot_info(spec.snapshot_path(settings.snapshot_dir))
                if info is not None and all(info.offsets.get(p, 0) >= e for p, e in ends.items()):
                    continue
                fingerprint = hashlib.sha1(
                    json.dumps(sorted(ends.items())).encode(), usedforsecurity=False
                ).hexdigest()[:12]
                requests.append(
                    RunRequest(
                        run_key=f"{spec.name}:{fingerprint}",
                        asset_selection=[table_asset_key(spec.name)],
                        tags={SOURCE_TAG: f"table:{spec.name}"},
                    )
                )
        finally:
            consumer.close()
        if not requests:
            return SensorResult(skip_reason=SkipReason("Every snapshot is at its topic's end"))
        return SensorResult(run_requests=requests)

    return _refresh
