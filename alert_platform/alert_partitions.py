"""The hourly partitions of the alert assets, as plain values.

Dagster's ``HourlyPartitionsDefinition`` is built from these where Dagster is allowed (the
alert assets, the ``backfill`` command); the core never imports Dagster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

PARTITIONS_START_VARIABLE = "ALERT_PLATFORM_PARTITIONS_START"
DEFAULT_PARTITIONS_START = "2026-11-01-00:00"
# The current, still-open hour is a partition too (live runs are filed there).
PARTITIONS_END_OFFSET = 1


def alert_partitions_start(env: Mapping[str, str] | None = None) -> str:
    """The first hourly partition key (``ALERT_PLATFORM_PARTITIONS_START``, else the default)."""
    env = os.environ if env is None else env
    return env.get(PARTITIONS_START_VARIABLE, DEFAULT_PARTITIONS_START)
