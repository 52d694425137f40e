"""Shared by the pipeline tests (test_pipeline_connector_failure, test_pipeline_onboarding): lookup
tables, a checked ``enrich_batch`` run and the accessors of its single outcome."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.engine import BatchResult, enrich_batch
from alert_platform.pipelines.spec import ASSIGNMENTS, SLACK_USERS, PipelineSpec, RenderOptions
from alert_platform.tables.lookup import LookupTable

DROP = object()  # as a value in the builders of test data: leave that key out

# Jane has a Slack user (found case-insensitively); Carol's row has no Slack user id.
USER_ROWS = [
    {"email": "jane.doe@example.com", "slack_user_id": "U0JANE", "name": "Jane"},
    {"email": "Carol@Example.com", "slack_user_id": "", "name": "Carol"},
]


def without_dropped(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not DROP}


def lookup_tables(
    assignment_rows: Iterable[Mapping[str, Any]], user_rows: Iterable[Mapping[str, Any]] = USER_ROWS
) -> dict[str, LookupTable]:
    """The assignments (by org id) and slack_users (by lower-cased email) tables."""
    return {
        ASSIGNMENTS: LookupTable.from_rows(ASSIGNMENTS, "org_id", assignment_rows),
        SLACK_USERS: LookupTable.from_rows(
            SLACK_USERS, "email", user_rows, normalise_key=str.lower
        ),
    }


def run_batch(
    spec: PipelineSpec,
    records: Sequence[SourceRecord],
    tables: dict[str, LookupTable],
    options: RenderOptions | None,
    *,
    now: datetime,
) -> BatchResult:
    """``enrich_batch``, checking that every record read is counted in exactly one outcome."""
    result = enrich_batch(spec, list(records), tables, options, now=now)
    counts = result.counts
    assert counts.read == len(records)
    assert (
        counts.filtered_out + counts.unmatched + counts.dead_lettered + counts.alerts == counts.read
    )
    return result


def only_alert(result: BatchResult) -> dict[str, Any]:
    """The value of the batch's one alert (and no dead letter)."""
    assert result.dead_letters == []
    assert len(result.alerts) == 1
    return orjson.loads(result.alerts[0].value)


def only_dead_letter(result: BatchResult) -> tuple[str, str]:
    """``(reason, stage)`` of the batch's one dead letter (and no alert)."""
    assert result.alerts == []
    assert len(result.dead_letters) == 1
    dead = result.dead_letters[0]
    return dead.reason, dead.stage


def contract_dedup_key(pipeline: str, *values: str) -> str:
    """Shared contract 1, computed here independently of the engine: ``pipeline:`` and the
    BLAKE2b-128 hex digest of the JSON array of the alert-id template's values."""
    digest = hashlib.blake2b(orjson.dumps(list(values)), digest_size=16).hexdigest()
    return f"{pipeline}:{digest}"


def flat_text(blocks: list[dict[str, Any]]) -> str:
    return orjson.dumps(blocks).decode()
