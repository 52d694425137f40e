"""The hourly partitions of the alert assets, as plain values.

Dagster's ``HourlyPartitionsDefinition`` is built from these where Dagster is allowed (the
alert assets, the ``backfill`` command); the core never imports Dagster.
"""

from __future__ import annotations

from alert_platform.settings import Settings

PARTITIONS_START_VARIABLE = "ALERT_PLATFORM_PARTITIONS_START"  # Settings.partitions_start
DEFAULT_PARTITIONS_START: str = Settings.model_fields["partitions_start"].default
# The current, still-open hour is a partition too (live runs are filed there).
PARTITIONS_END_OFFSET = 1


def alert_partitions_start(settings: Settings | None = None) -> str:
    """The first hourly partition key (``ALERT_PLATFORM_PARTITIONS_START``, else the default)."""
    return (settings or Settings.from_env()).partitions_start
