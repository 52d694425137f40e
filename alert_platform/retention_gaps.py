"""Retention gaps: offsets that retention deleted before the platform read them.

A gap is an :class:`~alert_platform.kafka.offsets.OffsetRange` of lost offsets. The tail
planner clamps ranges to the low watermark and hands the gaps to the run
(:mod:`alert_platform.kafka.tailing`); the run reports them in its metadata and its asset check
and posts one ops notice per gap (:func:`notify_gaps`, keyed
``retention-gap:<topic>:<partition>:<start>-<low>``, so a gap reported twice, by the sensor and
by a re-run, is announced once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.settings import Settings

_LOGGER = logging.getLogger("alert_platform.retention_gaps")


def gap_key(gap: OffsetRange) -> str:
    """The ops-notice key of ``gap`` (``gap.end`` is the low watermark that cut it)."""
    return f"retention-gap:{gap.topic}:{gap.partition}:{gap.start}-{gap.end}"


def gap_text(gap: OffsetRange, where: str) -> str:
    """The ops message of ``gap``, found by ``where`` (a pipeline, a sensor)."""
    return (
        f":warning: *Retention gap* in `{gap.topic}` partition {gap.partition}: offsets "
        f"{gap.start}..{gap.end - 1} ({gap.size} record(s)) were deleted by retention before "
        f"{where} read them; their alerts are lost. Processing went on from offset {gap.end}. "
        "Re-derive what the source still holds with `alert-platform backfill`, and check the "
        "topic's retention against the platform's lag."
    )


def notify_gaps(settings: Settings, gaps: Iterable[OffsetRange], where: str) -> int:
    """One ops notice per gap (at most once per gap key); how many were posted now.

    Never raises: a gap must not fail the run that found it (errors are logged).
    """
    todo = [gap for gap in gaps if not gap.empty]
    if not todo:
        return 0
    try:
        from alert_platform.ops_notices import OpsNotifier
        from alert_platform.slack.client import make_ops_client

        notifier = OpsNotifier(
            make_ops_client(settings),
            settings.slack_ops_channel,
            settings.effective_ledger_url,
            timedelta(minutes=settings.ops_reminder_minutes),
        )
    except Exception:
        _LOGGER.exception("cannot notify ops of %d retention gap(s)", len(todo))
        return 0
    posted = 0
    try:
        for gap in todo:
            key = gap_key(gap)
            try:
                posted += bool(notifier.notify(key, gap_text(gap, where), event=key))
            except Exception:
                _LOGGER.exception("ops notice of %s failed", key)
    finally:
        notifier.close()
    return posted
