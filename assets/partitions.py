"""The hourly partitions of the alert assets, and the key live runs are filed under."""

import time

from dagster import HourlyPartitionsDefinition

from alert_platform.alert_partitions import PARTITIONS_END_OFFSET, alert_partitions_start

ALERT_PARTITIONS = HourlyPartitionsDefinition(
    start_date=alert_partitions_start(), end_offset=PARTITIONS_END_OFFSET
)


def current_hour_partition(now: float | None = None) -> str:
    """The hourly partition key (``YYYY-MM-DD-HH:00``, UTC) of ``now`` (default: the clock)."""
    return ALERT_PARTITIONS.get_partition_key_for_timestamp(time.time() if now is None else now)
