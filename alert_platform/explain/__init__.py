"""Explain an alert or a source event: its lineage from Kafka record to Slack message.

:mod:`.models` holds the explanations, :mod:`.explainer` looks things up (ledger, run index,
Kafka) and :mod:`.evaluation` re-runs the engine on one record; :mod:`.render` writes them for
the CLI. Nothing here imports Dagster.
"""

from __future__ import annotations

from alert_platform.explain.evaluation import filter_reason
from alert_platform.explain.explainer import DEFAULT_SCAN_LIMIT, Explainer, delivery_summary
from alert_platform.explain.models import (
    ALERT,
    DEAD_LETTERED,
    FILTERED_OUT,
    TABLES_NOTE,
    UNAVAILABLE,
    UNMATCHED,
    AlertExplanation,
    EventExplanation,
    ExplainError,
    JoinStep,
    LedgerEntry,
    RunRef,
    parse_position,
)
from alert_platform.explain.render import render_alert, render_events, to_json

__all__ = [
    "ALERT",
    "DEAD_LETTERED",
    "DEFAULT_SCAN_LIMIT",
    "FILTERED_OUT",
    "TABLES_NOTE",
    "UNAVAILABLE",
    "UNMATCHED",
    "AlertExplanation",
    "EventExplanation",
    "ExplainError",
    "Explainer",
    "JoinStep",
    "LedgerEntry",
    "RunRef",
    "delivery_summary",
    "filter_reason",
    "parse_position",
    "render_alert",
    "render_events",
    "to_json",
]
