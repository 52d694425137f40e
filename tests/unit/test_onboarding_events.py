"""Onboarding producer core without services: events, rejections, time, query text, errors."""

from __future__ import annotations

import random
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import orjson
import pandas as pd
import pytest
from google.api_core import exceptions as api_exceptions

from alert_platform.bigquery import onboarding
from alert_platform.bigquery.onboarding import (
    OnboardingDeliveryError,
    OnboardingQueryError,
    accounts_table_ref,
    build_event,
    build_events,
    event_id,
    load_query,
    produce_onboarding_events,
    render_query,
)
from alert_platform.kafka.writer import BatchProducer
from alert_platform.local.profile import local_settings
from alert_platform.settings import ConfigError, Settings

DAY = date(2026, 3, 10)


def row(account_id: str | None = "001A", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "salesforce_account_id": account_id,
        "org_id": "org-1",
        "account_name": "Acme Analytics",
        "plan": "enterprise",
        "onboarding_started_at": datetime(2026, 3, 10, 9, 15, tzinfo=UTC),
        "csdr_email": "ada.lovelace@example.com",
        "region": "eu-west",
    }
    base.update(overrides)
    return base


def decoded(value: bytes) -> dict[str, Any]:
    return orjson.loads(value)


# --- events ----------------------------------------------------------------------------------


def test_event_shape() -> None:
    batch = build_events([row()], DAY)
    assert batch.rejected == []
    [(key, value)] = batch.events
    assert key == b"001A"
    assert decoded(value) == {
        "id": "onboarding-started:001A:2026-03-10",
        "type": "onboarding.started",
        "time": "2026-03-10T09:15:00Z",
        "data": {
            "salesforce_account_id": "001A",
            "org_id": "org-1",
            "account_name": "Acme Analytics",
            "plan": "enterprise",
            "started_at": "2026-03-10T09:15:00Z",
            "region": "eu-west",
            "csdr_email": "ada.lovelace@example.com",
        },
    }
    assert batch.event_ids == ["onboarding-started:001A:2026-03-10"]


def test_same_input_gives_identical_events() -> None:
    rows = [row(f"001{i:03d}", org_id=f"org-{i}") for i in range(20)]
    first = build_events(rows, DAY)
    second = build_events([dict(r) for r in rows], DAY)
    assert first == second  # byte-identical keys and values, same order
    assert first.event_ids == [f"onboarding-started:001{i:03d}:2026-03-10" for i in range(20)]
    # Order of the rows does not change any event, only the order they come out in.
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(build_events(shuffled, DAY).events) == sorted(first.events)


def test_id_depends_on_account_and_day_only() -> None:
    a = decoded(build_events([row(plan="team")], DAY).events[0][1])
    b = decoded(
        build_events(
            [row(plan="starter", onboarding_started_at="2026-03-10T22:00:00Z")], DAY
        ).events[0][1]
    )
    assert a["id"] == b["id"] == event_id("001A", DAY)
    assert a["data"] != b["data"]
    assert event_id("001A", DAY) != event_id("001A", DAY + timedelta(days=1))
    assert event_id("001A", DAY) != event_id("001B", DAY)


def test_day_as_partition_key_string() -> None:
    assert build_events([row()], "2026-03-10") == build_events([row()], DAY)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        build_events([row()], "10/03/2026")
    with pytest.raises(TypeError, match="not a datetime"):
        build_events([row()], datetime(2026, 3, 10, tzinfo=UTC))


def test_optional_fields_null_or_blank_become_null_and_text_is_stripped() -> None:
    rows = [row(" 001A ", org_id=" org-1 ", plan=None, region="  ", csdr_email=float("nan"))]
    [(key, value)] = build_events(rows, DAY).events
    event = decoded(value)
    assert key == b"001A"
    assert event["id"] == "onboarding-started:001A:2026-03-10"
    assert event["data"]["org_id"] == "org-1"
    assert event["data"]["plan"] is None
    assert event["data"]["region"] is None
    assert event["data"]["csdr_email"] is None


def test_unicode_account_name_round_trips() -> None:
    name = "Zürich & Søn <Ω>"
    [(_, value)] = build_events([row(account_name=name)], DAY).events
    assert decoded(value)["data"]["account_name"] == name


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"org_id": None}, "org_id missing"),
        ({"org_id": ""}, "org_id empty"),
        ({"account_name": None}, "account_name missing"),
        ({"account_name": "   "}, "account_name empty"),
        ({"onboarding_started_at": None}, "onboarding_started_at missing"),
        ({"onboarding_started_at": pd.NaT}, "onboarding_started_at missing"),
        ({"org_id": 42}, "org_id is int, expected a string"),
        ({"plan": 3}, "plan is int, expected a string or null"),
        ({"onboarding_started_at": "yesterday"}, "onboarding_started_at is not an ISO 8601"),
        ({"onboarding_started_at": 1773133200}, "onboarding_started_at is int"),
        (
            {"onboarding_started_at": datetime(2026, 3, 9, 23, 59, 59, tzinfo=UTC)},
            "onboarding_started_at 2026-03-09T23:59:59Z is not on 2026-03-10 (UTC)",
        ),
    ],
)
def test_rejection_reasons(overrides: dict[str, Any], reason: str) -> None:
    batch = build_events([row("001BAD", **overrides), row("001OK")], DAY)
    assert [key for key, _ in batch.events] == [b"001OK"]
    [(row_id, got)] = batch.rejected
    assert row_id == "001BAD"
    assert got.startswith(reason)


def test_missing_account_id_is_reported_by_row_index() -> None:
    rows = [row("001OK"), row(None), {"org_id": "org-9"}, row("")]
    batch = build_events(rows, DAY)
    assert [key for key, _ in batch.events] == [b"001OK"]
    assert batch.rejected == [
        ("row[1]", "salesforce_account_id missing"),
        ("row[2]", "salesforce_account_id missing"),
        ("row[3]", "salesforce_account_id empty"),
    ]


def test_duplicate_account_in_batch_keeps_the_first() -> None:
    batch = build_events([row(plan="team"), row(plan="business")], DAY)
    assert len(batch.events) == 1
    assert decoded(batch.events[0][1])["data"]["plan"] == "team"
    assert batch.rejected == [("001A", "duplicate salesforce_account_id in batch")]


def test_build_event_raises_the_reason() -> None:
    with pytest.raises(ValueError, match=r"^org_id missing$"):
        build_event(row(org_id=None), DAY)
    assert build_event(row(), DAY) == build_events([row()], DAY).events[0]


# --- time normalisation ----------------------------------------------------------------------

CET = timezone(timedelta(hours=1))


@pytest.mark.parametrize(
    ("started", "expected"),
    [
        (datetime(2026, 3, 10, 0, 0, tzinfo=UTC), "2026-03-10T00:00:00Z"),
        (datetime(2026, 3, 10, 23, 59, 59, 999999, tzinfo=UTC), "2026-03-10T23:59:59.999999Z"),
        (datetime(2026, 3, 10, 12, 0, 0, 500000, tzinfo=UTC), "2026-03-10T12:00:00.500000Z"),
        # Other offsets are converted: 00:30+01:00 on the 11th is still the 10th in UTC.
        (datetime(2026, 3, 11, 0, 30, tzinfo=CET), "2026-03-10T23:30:00Z"),
        (datetime(2026, 3, 10, 9, 15), "2026-03-10T09:15:00Z"),  # naive = UTC
        ("2026-03-10T09:15:00Z", "2026-03-10T09:15:00Z"),
        ("2026-03-10T09:15:00.250+00:00", "2026-03-10T09:15:00.250000Z"),
        ("2026-03-10 11:15:00+02:00", "2026-03-10T09:15:00Z"),
        (pd.Timestamp("2026-03-10T09:15:00.123456789Z"), "2026-03-10T09:15:00.123456Z"),
    ],
)
def test_time_is_rfc3339_utc(started: Any, expected: str) -> None:
    [(_, value)] = build_events([row(onboarding_started_at=started)], DAY).events
    event = decoded(value)
    assert event["time"] == expected
    assert event["data"]["started_at"] == expected


def test_day_boundary_uses_utc() -> None:
    # 23:30 on the 10th in UTC-05:00 is the 11th in UTC: not on the 10th.
    late = datetime(2026, 3, 10, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    batch = build_events([row(onboarding_started_at=late)], DAY)
    assert batch.events == []
    assert batch.rejected == [
        ("001A", "onboarding_started_at 2026-03-11T04:30:00Z is not on 2026-03-10 (UTC)")
    ]
    assert len(build_events([row(onboarding_started_at=late)], DAY + timedelta(1)).events) == 1


# --- query text ------------------------------------------------------------------------------


def test_query_template_and_rendering() -> None:
    template = load_query()
    assert "{accounts_table}" in template
    settings = Settings().with_overrides(bigquery_project="my-proj-1", bigquery_dataset="wh_01")
    sql = render_query(settings)
    assert "{accounts_table}" not in sql
    assert "FROM `my-proj-1.wh_01.accounts`" in sql
    assert accounts_table_ref(settings) == "`my-proj-1.wh_01.accounts`"
    assert "QUALIFY" in sql
    assert "DATE(onboarding_started_at, 'UTC') = @day" in sql


def test_parameter_appears_only_in_code() -> None:
    # The emulator counts every textual "@name", comments and strings included.
    lines = [line for line in load_query().splitlines() if "@" in line]
    assert lines == ["  DATE(onboarding_started_at, 'UTC') = @day"]


def test_domain_scoped_project_is_accepted() -> None:
    settings = Settings().with_overrides(bigquery_project="example.com:proj-x")
    assert accounts_table_ref(settings) == "`example.com:proj-x.warehouse.accounts`"


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"bigquery_dataset": "wh`; DROP TABLE x; --"}, "BIGQUERY_DATASET"),
        ({"bigquery_dataset": "with-hyphen"}, "BIGQUERY_DATASET"),
        ({"bigquery_dataset": ""}, "BIGQUERY_DATASET"),
        ({"bigquery_project": "proj`.x"}, "BIGQUERY_PROJECT"),
        ({"bigquery_project": "has space"}, "BIGQUERY_PROJECT"),
        ({"bigquery_project": ""}, "BIGQUERY_PROJECT"),
    ],
)
def test_table_identifier_is_validated(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        render_query(local_settings(**changes))


# --- orchestration with fakes (no services) --------------------------------------------------


def run(client: Any, producer: Any = None, topic: str = "onboarding-events") -> Any:
    """produce_onboarding_events for DAY with fakes (typed Any: they only quack like clients)."""
    batch = BatchProducer(producer) if producer is not None else None
    return produce_onboarding_events(
        local_settings(), DAY, client=client, producer=batch, topic=topic, flush_timeout=0.2
    )


class FakeJob:
    def __init__(self, rows: list[dict[str, Any]], error: Exception | None = None) -> None:
        self.job_id = "onboarding_started_fake"
        self.total_bytes_processed = 123
        self._rows = rows
        self._error = error

    def result(self, timeout: float | None = None) -> list[Any]:
        if self._error is not None:
            self._error.query_job = self  # type: ignore[attr-defined]  # as the client does
            raise self._error
        return [_Row(r) for r in self._rows]


class _Row(dict):  # bigquery.Row exposes items()
    pass


class FakeClient:
    def __init__(self, job: FakeJob | None = None, error: Exception | None = None) -> None:
        self.job, self.error, self.calls = job, error, []

    def query(self, sql: str, **kwargs: Any) -> FakeJob:
        self.calls.append((sql, kwargs))
        if self.error is not None:
            raise self.error
        assert self.job is not None
        return self.job


class FakeProducer:
    """Quacks like confluent_kafka.Producer for BatchProducer (positional produce, reports on
    flush)."""

    def __init__(self, fail_keys: set[bytes] | None = None, stuck: int = 0) -> None:
        self.fail_keys, self.stuck = fail_keys or set(), stuck
        self.produced: list[tuple[str, bytes, bytes]] = []
        self._pending: list[Any] = []

    def produce(
        self, topic: str, value: bytes, key: bytes, partition: int = -1, on_delivery: Any = None
    ) -> None:
        self.produced.append((topic, key, value))
        self._pending.append((topic, key, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        for offset, (topic, key, callback) in enumerate(self._pending):
            error = _Error("Broker: Message too large") if key in self.fail_keys else None
            callback(error, _Msg(topic, key, offset))
        self._pending.clear()
        return self.stuck


class _Error:
    def __init__(self, text: str) -> None:
        self._text = text

    def str(self) -> str:
        return self._text

    def code(self) -> int:
        return 10  # MSG_SIZE_TOO_LARGE


class _Msg:
    def __init__(self, topic: str, key: bytes, offset: int) -> None:
        self._topic, self._key, self._offset = topic, key, offset

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_produce_reports_rows_rejections_and_job() -> None:
    client = FakeClient(FakeJob([row("001A"), row("001B", org_id=None), row("001C")]))
    producer = FakeProducer()
    report = run(client, producer, topic="t")
    assert report.day == DAY
    assert report.rows == 3
    assert report.produced == 2
    assert report.rejected == [("001B", "org_id missing")]
    assert report.query_job_id == "onboarding_started_fake"
    assert report.bytes_processed == 123
    assert report.event_ids == [event_id("001A", DAY), event_id("001C", DAY)]
    assert [(t, k) for t, k, _ in producer.produced] == [("t", b"001A"), ("t", b"001C")]
    [(sql, kwargs)] = client.calls
    assert "`local-dev.warehouse.accounts`" in sql
    [parameter] = kwargs["job_config"].query_parameters
    assert (parameter.name, parameter.type_, parameter.value) == ("day", "DATE", DAY)


def test_no_rows_produces_nothing() -> None:
    report = run(FakeClient(FakeJob([])), FakeProducer())
    assert (report.rows, report.produced, report.rejected, report.event_ids) == (0, 0, [], [])


def test_delivery_failure_raises() -> None:
    producer = FakeProducer(fail_keys={b"001B"})
    client = FakeClient(FakeJob([row("001A"), row("001B")]))
    with pytest.raises(OnboardingDeliveryError, match=r"1 of 2 .* 001B: Broker: Message too large"):
        run(client, producer)


def test_undelivered_after_flush_raises() -> None:
    client = FakeClient(FakeJob([row("001A")]))
    with pytest.raises(OnboardingDeliveryError, match="1 still queued") as info:
        run(client, FakeProducer(stuck=1))
    assert info.value.undelivered == 1


def test_job_failure_carries_bigquery_message_and_job_id() -> None:
    errors = [{"reason": "invalidQuery", "message": "Unrecognized name: is_test at [28:7]"}]
    error = api_exceptions.BadRequest("Unrecognized name: is_test at [28:7]", errors=errors)
    client = FakeClient(FakeJob([], error=error))
    with pytest.raises(OnboardingQueryError) as info:
        run(client, FakeProducer())
    exc = info.value
    assert exc.message == "Unrecognized name: is_test at [28:7]"
    assert exc.errors == errors
    assert exc.code == 400
    assert exc.job_id == "onboarding_started_fake"
    assert exc.day == DAY
    assert exc.__cause__ is error
    assert re.search(r"2026-03-10 failed \(job onboarding_started_fake\): Unrecognized", str(exc))


def test_failure_before_a_job_exists() -> None:
    error = api_exceptions.Forbidden(
        "Quota exceeded", errors=[{"reason": "quotaExceeded", "message": "Quota exceeded"}]
    )
    with pytest.raises(OnboardingQueryError, match="Quota exceeded") as info:
        run(FakeClient(error=error))
    assert info.value.job_id is None
    assert info.value.code == 403
    assert info.value.errors[0]["reason"] == "quotaExceeded"


def test_retry_exhaustion_is_a_query_error() -> None:
    cause = ConnectionError("connection refused")
    error = api_exceptions.RetryError("Deadline of 600.0s exceeded", cause)
    with pytest.raises(OnboardingQueryError, match="connection refused"):
        client: Any = FakeClient(error=error)
        onboarding.fetch_onboarding_rows(client, local_settings(), DAY)
