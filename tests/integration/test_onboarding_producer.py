"""The onboarding producer against the real BigQuery emulator and the real local broker.

Each test seeds its own dataset (uuid name) so tests never see each other's rows, and produces
to its own topic.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from google.cloud import bigquery

from alert_platform.bigquery.client import make_bigquery_client
from alert_platform.bigquery.onboarding import (
    JOB_ID_PREFIX,
    OnboardingQueryError,
    event_id,
    fetch_onboarding_rows,
    produce_onboarding_events,
)
from alert_platform.kafka.clients import make_consumer
from alert_platform.local.bigquery_seed import accounts_table_id, ensure_accounts_table
from alert_platform.settings import Settings

pytestmark = pytest.mark.integration

DAY = date(2026, 3, 10)


def account(account_id: str | None, started: str | None, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "salesforce_account_id": account_id,
        "org_id": f"org-{account_id}",
        "account_name": f"Account {account_id}",
        "plan": "business",
        "onboarding_started_at": started,
        "csdr_email": "ada.lovelace@example.com",
        "region": "eu-west",
        "is_test": False,
    }
    row.update(overrides)
    return row


# Qualifying on DAY: FIRST (its 14:00 duplicate collapses into it), MIDNIGHT and LAST (the day's
# UTC bounds), OFFSET (an ISO time with +02:00 that is DAY in UTC), NULLTEST (is_test NULL),
# TIE (two rows at the same instant: the one with org_id wins, NULLs sort last in the tie).
# Not produced: TEST (test account), NOORG (org_id missing, rejected), EMPTYNAME (rejected),
# PREV / NEXT (other days), NOSTART (no start time).
WAREHOUSE_ROWS = [
    account("001FIRST", "2026-03-10T09:15:00Z", plan="enterprise"),
    account("001FIRST", "2026-03-10T14:00:00Z", account_name="Later duplicate"),
    account("001MIDNIGHT", "2026-03-10T00:00:00Z", plan=None, region=None, csdr_email=None),
    account("001LAST", "2026-03-10T23:59:59.250000Z"),
    account("001OFFSET", "2026-03-11T01:30:00+02:00"),
    account("001NULLTEST", "2026-03-10T12:00:00Z", is_test=None),
    account("001TIE", "2026-03-10T13:00:00Z", org_id=None),
    account("001TIE", "2026-03-10T13:00:00Z"),
    account("001TEST", "2026-03-10T10:00:00Z", is_test=True),
    account("001NOORG", "2026-03-10T11:00:00Z", org_id=None),
    account("001EMPTYNAME", "2026-03-10T11:30:00Z", account_name=""),
    account("001PREV", "2026-03-09T23:59:59Z"),
    account("001NEXT", "2026-03-11T00:00:00Z"),
    account("001NOSTART", None),
]

EXPECTED_TIMES = {
    "001MIDNIGHT": "2026-03-10T00:00:00Z",
    "001FIRST": "2026-03-10T09:15:00Z",
    "001NULLTEST": "2026-03-10T12:00:00Z",
    "001TIE": "2026-03-10T13:00:00Z",
    "001OFFSET": "2026-03-10T23:30:00Z",
    "001LAST": "2026-03-10T23:59:59.250000Z",
}
EXPECTED_REJECTED = [("001NOORG", "org_id missing"), ("001EMPTYNAME", "account_name empty")]


@pytest.fixture(scope="module")
def stack(bigquery_settings: Settings, kafka_settings: Settings) -> Settings:
    """Settings with the emulator and the broker both running (the same session stack)."""
    assert bigquery_settings.bigquery_api_endpoint == kafka_settings.bigquery_api_endpoint
    return kafka_settings


@pytest.fixture(scope="module")
def bq(stack: Settings) -> bigquery.Client:
    return make_bigquery_client(stack)


@pytest.fixture
def warehouse(stack: Settings, bq: bigquery.Client) -> Callable[..., Settings]:
    """Factory: a fresh dataset with an ``accounts`` table holding ``rows``; its Settings."""

    def make(rows: list[dict[str, Any]]) -> Settings:
        settings = stack.with_overrides(bigquery_dataset=f"onboarding_{uuid.uuid4().hex}")
        ensure_accounts_table(settings, bq)
        if rows:
            # Direct insert (seed_warehouse would skip the duplicate account on purpose).
            errors = bq.insert_rows_json(accounts_table_id(settings), rows)
            assert errors == []
        return settings

    return make


def consume_all(settings: Settings, topic: str, expected: int, partitions: int) -> list[Any]:
    """Every message of ``topic`` from the beginning: waits for ``expected``, then makes sure
    nothing more arrives (the local broker's watermarks cannot be trusted for this)."""
    consumer = make_consumer(settings, group_id=f"test-{uuid.uuid4().hex}")
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        messages: list[Any] = []
        deadline = time.monotonic() + 30
        quiet_until = None
        while time.monotonic() < deadline:
            batch = consumer.consume(100, timeout=0.2)
            for message in batch:
                assert message.error() is None, message.error()
                messages.append(message)
            if len(messages) >= expected:
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() >= quiet_until:
                    break
        return messages
    finally:
        consumer.close()


def by_key(messages: list[Any]) -> dict[str, dict[str, Any]]:
    return {m.key().decode(): orjson.loads(m.value()) for m in messages}


def test_produces_exactly_the_qualifying_accounts(
    warehouse: Callable[..., Settings], make_topic: Callable[..., str]
) -> None:
    settings = warehouse(WAREHOUSE_ROWS)
    topic = make_topic(partitions=3)

    report = produce_onboarding_events(settings, DAY, topic=topic)

    assert report.day == DAY
    assert report.topic == topic
    assert report.rows == len(EXPECTED_TIMES) + len(EXPECTED_REJECTED)
    assert report.produced == len(EXPECTED_TIMES)
    assert sorted(report.rejected) == sorted(EXPECTED_REJECTED)
    assert report.query_job_id is not None
    assert report.query_job_id.startswith(JOB_ID_PREFIX)
    assert report.bytes_processed is not None  # the emulator reports 0
    assert sorted(report.event_ids) == sorted(event_id(a, DAY) for a in EXPECTED_TIMES)

    messages = consume_all(settings, topic, report.produced, partitions=3)
    assert len(messages) == len(EXPECTED_TIMES)
    events = by_key(messages)
    assert set(events) == set(EXPECTED_TIMES)
    for account_id, event in events.items():
        assert event["id"] == f"onboarding-started:{account_id}:2026-03-10"
        assert event["type"] == "onboarding.started"
        assert event["time"] == EXPECTED_TIMES[account_id]
        assert event["data"]["started_at"] == EXPECTED_TIMES[account_id]
        assert event["data"]["salesforce_account_id"] == account_id
        assert event["data"]["org_id"] == f"org-{account_id}"
    # The duplicate collapsed into the earliest row of the day.
    assert events["001FIRST"]["data"]["account_name"] == "Account 001FIRST"
    assert events["001FIRST"]["data"]["plan"] == "enterprise"
    assert events["001MIDNIGHT"]["data"] == {
        "salesforce_account_id": "001MIDNIGHT",
        "org_id": "org-001MIDNIGHT",
        "account_name": "Account 001MIDNIGHT",
        "plan": None,
        "started_at": "2026-03-10T00:00:00Z",
        "region": None,
        "csdr_email": None,
    }


def test_rerunning_a_day_produces_identical_events(
    warehouse: Callable[..., Settings], make_topic: Callable[..., str]
) -> None:
    settings = warehouse(WAREHOUSE_ROWS)
    topic = make_topic(partitions=2)

    first = produce_onboarding_events(settings, DAY, topic=topic)
    second = produce_onboarding_events(settings, "2026-03-10", topic=topic)

    assert second.event_ids == first.event_ids
    assert second.rejected == first.rejected
    assert second.query_job_id != first.query_job_id
    messages = consume_all(settings, topic, 2 * first.produced, partitions=2)
    assert len(messages) == 2 * first.produced
    runs: dict[str, list[tuple[bytes, int]]] = {}
    for message in messages:
        runs.setdefault(message.key().decode(), []).append((message.value(), message.partition()))
    assert set(runs) == set(EXPECTED_TIMES)
    for copies in runs.values():
        # Byte-identical value (same id) and the same partition (same key) both times.
        assert len(copies) == 2
        assert copies[0] == copies[1]


def test_other_days_and_empty_days(
    warehouse: Callable[..., Settings], make_topic: Callable[..., str], bq: bigquery.Client
) -> None:
    settings = warehouse(WAREHOUSE_ROWS)
    assert [
        row["salesforce_account_id"] for row in fetch_onboarding_rows(bq, settings, "2026-03-09")
    ] == ["001PREV"]
    next_day = fetch_onboarding_rows(bq, settings, date(2026, 3, 11))
    assert [row["salesforce_account_id"] for row in next_day] == ["001NEXT"]

    topic = make_topic()
    report = produce_onboarding_events(settings, date(2026, 3, 12), topic=topic)
    assert (report.rows, report.produced, report.rejected) == (0, 0, [])
    assert consume_all(settings, topic, 0, partitions=1) == []


def test_missing_table_raises_with_bigquery_message(
    stack: Settings, make_topic: Callable[..., str]
) -> None:
    dataset = f"onboarding_missing_{uuid.uuid4().hex}"
    settings = stack.with_overrides(bigquery_dataset=dataset)
    with pytest.raises(OnboardingQueryError) as info:
        produce_onboarding_events(settings, DAY, topic=make_topic())
    exc = info.value
    cause = exc.__cause__
    assert cause is not None
    assert exc.message == cause.message  # type: ignore[attr-defined]
    assert "Not found" in exc.message
    assert dataset in exc.message
    assert exc.code == 404
    assert exc.errors
    assert exc.errors[0]["reason"] == "notFound"
    assert exc.job_id is not None
    assert exc.job_id.startswith(JOB_ID_PREFIX)
    assert exc.job_id in str(exc)
    assert dataset in str(exc)


def test_schema_drift_raises_with_bigquery_message(stack: Settings, bq: bigquery.Client) -> None:
    # An `accounts` table that lost its is_test column: the query itself is invalid.
    settings = stack.with_overrides(bigquery_dataset=f"onboarding_{uuid.uuid4().hex}")
    bq.create_dataset(f"{settings.bigquery_project}.{settings.bigquery_dataset}")
    schema = [
        bigquery.SchemaField("salesforce_account_id", "STRING"),
        bigquery.SchemaField("org_id", "STRING"),
        bigquery.SchemaField("onboarding_started_at", "TIMESTAMP"),
    ]
    bq.create_table(bigquery.Table(accounts_table_id(settings), schema=schema))
    with pytest.raises(OnboardingQueryError) as info:
        fetch_onboarding_rows(bq, settings, DAY)
    exc = info.value
    assert exc.code == 400
    assert exc.errors and exc.errors[0]["reason"] == "invalidQuery"
    assert exc.message == exc.__cause__.message  # type: ignore[union-attr]
    assert exc.job_id is not None
