"""Scheduled producer: accounts whose onboarding started on a day -> ``onboarding-events``.

A daily-partitioned Dagster asset calls :func:`produce_onboarding_events` with the partition's
date. The steps are usable on their own:

1. :func:`fetch_onboarding_rows` runs ``sql/onboarding_started.sql`` (``@day`` DATE parameter,
   table from settings) and returns the rows as dicts. Any BigQuery failure (bad SQL, missing
   table, auth, quota, timeout) raises :class:`OnboardingQueryError` with BigQuery's own message
   and the job id.
2. :func:`build_events` turns rows into Kafka ``(key, value)`` pairs and rejects incomplete rows
   with a reason. Pure and deterministic: the same rows and day give byte-identical events, so
   re-running a day yields the same event ids and the alerts derived from them de-duplicate.
3. The events are produced with the project's idempotent producer, flushed, and any delivery
   failure raises :class:`OnboardingDeliveryError`.

Event value (JSON)::

    {"id": "onboarding-started:<salesforce_account_id>:<YYYY-MM-DD>",
     "type": "onboarding.started",
     "time": "<onboarding_started_at, RFC 3339 UTC>",
     "data": {"salesforce_account_id", "org_id", "account_name", "plan", "started_at",
              "region", "csdr_email"}}

Key: the Salesforce account id (UTF-8). See docs/onboarding.md for what qualifies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

import orjson
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import bigquery

from alert_platform.bigquery.client import make_bigquery_client
from alert_platform.bigquery.tables import ACCOUNTS_TABLE
from alert_platform.kafka.writer import BatchProducer, ProduceError
from alert_platform.settings import ConfigError, Settings
from alert_platform.topics import ONBOARDING_EVENTS
from alert_platform.wire import format_rfc3339

EVENT_TYPE = "onboarding.started"
QUERY_FILE = "onboarding_started.sql"
TABLE_PLACEHOLDER = "{accounts_table}"
JOB_ID_PREFIX = "onboarding_started_"

REQUIRED_FIELDS = ("salesforce_account_id", "org_id", "onboarding_started_at", "account_name")
OPTIONAL_FIELDS = ("plan", "region", "csdr_email")

# Project ids: letters, digits, hyphens, optionally domain-scoped (``example.com:project``).
_PROJECT_RE = re.compile(r"(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{0,61}[a-z0-9]", re.I)
_DATASET_RE = re.compile(r"[A-Za-z0-9_]{1,1024}")


class OnboardingQueryError(RuntimeError):
    """The onboarding query failed in BigQuery (or BigQuery could not be reached).

    ``message`` is BigQuery's own message, ``errors`` its structured error list (``reason``,
    ``message``, ``location``), ``job_id`` the query job if one was created, ``day`` the day,
    ``hint`` the settings to check (not found / access denied: the project and dataset).
    The original exception is chained as ``__cause__``.
    """

    def __init__(
        self,
        day: date,
        message: str,
        *,
        job_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        code: int | None = None,
        hint: str = "",
    ) -> None:
        self.day = day
        self.message = message
        self.job_id = job_id
        self.errors = list(errors or [])
        self.code = code
        self.hint = hint
        job = f" (job {job_id})" if job_id else ""
        tail = f"; {hint}" if hint else ""
        super().__init__(f"onboarding query for {day.isoformat()} failed{job}: {message}{tail}")


class OnboardingDeliveryError(RuntimeError):
    """Some onboarding events were not acknowledged by Kafka; ``failures`` lists
    ``(event key, reason)`` and ``undelivered`` counts messages still queued after the flush."""

    def __init__(
        self, topic: str, failures: list[tuple[str, str]], undelivered: int, total: int
    ) -> None:
        self.topic = topic
        self.failures = failures
        self.undelivered = undelivered
        self.total = total
        shown = "; ".join(f"{key}: {reason}" for key, reason in failures[:5])
        more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
        parts = [f"{len(failures)} of {total} onboarding events failed delivery to {topic!r}"]
        if undelivered:
            parts.append(f"{undelivered} still queued after the flush timeout")
        super().__init__(", ".join(parts) + (f": {shown}{more}" if shown else ""))


Event = tuple[bytes, bytes]  # (key, value) as produced


@dataclass(frozen=True)
class OnboardingBatch:
    """Events to produce and rows rejected as ``(row id, reason)``."""

    events: list[Event]
    rejected: list[tuple[str, str]]

    @property
    def event_ids(self) -> list[str]:
        return [orjson.loads(value)["id"] for _, value in self.events]


@dataclass(frozen=True)
class OnboardingQueryResult:
    """Rows returned by the onboarding query plus the job's id and bytes processed."""

    rows: list[dict[str, Any]]
    job_id: str | None
    bytes_processed: int | None


@dataclass(frozen=True)
class OnboardingReport:
    """What one run did for ``day``: ``rows`` returned by the query, ``produced`` events,
    ``rejected`` rows as ``(row id, reason)``, the query job and the event ids produced."""

    day: date
    topic: str
    rows: int
    produced: int
    rejected: list[tuple[str, str]]
    query_job_id: str | None
    bytes_processed: int | None
    event_ids: list[str] = field(default_factory=list)


# --- query ---------------------------------------------------------------------------------


def load_query() -> str:
    """The SQL template (``sql/onboarding_started.sql``) with its table placeholder."""
    return (resources.files("alert_platform.bigquery") / "sql" / QUERY_FILE).read_text("utf-8")


def accounts_table_ref(settings: Settings) -> str:
    """The backquoted ``project.dataset.accounts`` identifier, after validating both parts.

    Raises :class:`~alert_platform.settings.ConfigError` naming the variable to fix: the
    identifier is pasted into SQL, so nothing but a well-formed name may get there.
    """
    project, dataset = settings.bigquery_project, settings.bigquery_dataset
    if not _PROJECT_RE.fullmatch(project or ""):
        raise ConfigError(f"BIGQUERY_PROJECT is not a valid BigQuery project id: {project!r}")
    if not _DATASET_RE.fullmatch(dataset or ""):
        raise ConfigError(
            f"BIGQUERY_DATASET must be letters, digits and underscores, got {dataset!r}"
        )
    return f"`{project}.{dataset}.{ACCOUNTS_TABLE}`"


def render_query(settings: Settings) -> str:
    """:func:`load_query` with the table placeholder replaced by :func:`accounts_table_ref`."""
    template = load_query()
    if TABLE_PLACEHOLDER not in template:
        raise RuntimeError(f"{QUERY_FILE} lost its {TABLE_PLACEHOLDER} placeholder")
    return template.replace(TABLE_PLACEHOLDER, accounts_table_ref(settings))


def coerce_day(day: date | str) -> date:
    """A ``date`` from a ``date`` or an ISO ``YYYY-MM-DD`` string (a Dagster partition key)."""
    if isinstance(day, datetime):
        raise TypeError("day must be a date, not a datetime (which UTC day would it be?)")
    if isinstance(day, date):
        return day
    if isinstance(day, str):
        try:
            return date.fromisoformat(day)
        except ValueError:
            raise ValueError(f"day must be YYYY-MM-DD, got {day!r}") from None
    raise TypeError(f"day must be a date or YYYY-MM-DD string, got {type(day).__name__}")


def _query_error(
    day: date, exc: BaseException, job_id: str | None, settings: Settings | None = None
) -> OnboardingQueryError:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        query_job = getattr(exc, "query_job", None)
        job_id = getattr(query_job, "job_id", None) or job_id
        hint = ""
        if settings is not None and exc.code in (403, 404):  # wrong project or dataset
            hint = (
                f"check BIGQUERY_PROJECT (now {settings.bigquery_project!r}) and "
                f"BIGQUERY_DATASET (now {settings.bigquery_dataset!r})"
            )
        return OnboardingQueryError(
            day,
            exc.message or str(exc),
            job_id=job_id,
            errors=list(exc.errors or []),
            code=exc.code,
            hint=hint,
        )
    if isinstance(exc, api_exceptions.RetryError) and exc.cause is not None:
        message = f"{exc.message}; last error: {exc.cause}"
        return OnboardingQueryError(day, message, job_id=job_id)
    return OnboardingQueryError(day, f"{type(exc).__name__}: {exc}", job_id=job_id)


_QUERY_FAILURES = (
    api_exceptions.GoogleAPIError,  # GoogleAPICallError (HTTP errors), RetryError
    auth_exceptions.GoogleAuthError,  # no/expired credentials
    FuturesTimeoutError,  # job.result(timeout=...) ran out
    TimeoutError,
)


def run_onboarding_query(
    client: bigquery.Client,
    settings: Settings,
    day: date | str,
    *,
    timeout: float | None = 300.0,
) -> OnboardingQueryResult:
    """Run the onboarding query for ``day``; rows as dicts (TIMESTAMPs as aware datetimes).

    Rows are read by iterating the job's result pages over REST (no Storage Read API, which
    the emulator lacks). Raises :class:`OnboardingQueryError` on any BigQuery failure.
    """
    day = coerce_day(day)
    sql = render_query(settings)
    job_config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter("day", "DATE", day)],
        labels={"component": "alert-platform", "producer": "onboarding-started"},
    )
    job: bigquery.QueryJob | None = None
    try:
        job = client.query(sql, job_config=job_config, job_id_prefix=JOB_ID_PREFIX, timeout=timeout)
        rows = [dict(row.items()) for row in job.result(timeout=timeout)]
    except _QUERY_FAILURES as exc:
        raise _query_error(day, exc, job.job_id if job is not None else None, settings) from exc
    return OnboardingQueryResult(rows, job.job_id, job.total_bytes_processed)


def fetch_onboarding_rows(
    client: bigquery.Client, settings: Settings, day: date | str
) -> list[dict[str, Any]]:
    """The rows :func:`run_onboarding_query` returns for ``day`` (one per qualifying account)."""
    return run_onboarding_query(client, settings, day).rows


# --- events --------------------------------------------------------------------------------


def event_id(salesforce_account_id: str, day: date) -> str:
    """The deterministic event id: ``onboarding-started:<account id>:<YYYY-MM-DD>``."""
    return f"onboarding-started:{salesforce_account_id}:{day.isoformat()}"


format_time = format_rfc3339  # RFC 3339 in UTC with ``Z`` (the one codec, ``alert_platform.wire``)


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _is_missing(value: Any) -> bool:
    # None, NaN / NaT (rows that went through pandas), or a blank string.
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(value != value)  # NaT and other "not equal to itself" nulls
    except (TypeError, ValueError):
        return False


def _text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if isinstance(value, str) and not value.strip():
        raise _Rejected(f"{name} empty")
    if _is_missing(value):
        raise _Rejected(f"{name} missing")
    if not isinstance(value, str):
        raise _Rejected(f"{name} is {type(value).__name__}, expected a string")
    return value.strip()


def _optional_text(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if _is_missing(value):
        return None
    if not isinstance(value, str):
        raise _Rejected(f"{name} is {type(value).__name__}, expected a string or null")
    return value.strip()


def _started_at(row: Mapping[str, Any]) -> datetime:
    name = "onboarding_started_at"
    value = row.get(name)
    if _is_missing(value):
        raise _Rejected(f"{name} missing")
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _Rejected(f"{name} is not an ISO 8601 timestamp: {value[:64]!r}") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise _Rejected(f"{name} is {type(value).__name__}, expected a timestamp")
    if hasattr(moment, "to_pydatetime"):  # pandas.Timestamp (nanoseconds dropped)
        moment = moment.to_pydatetime(warn=False)
    if moment.tzinfo is None:  # BigQuery TIMESTAMPs are UTC instants
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _row_id(row: Mapping[str, Any], index: int) -> str:
    value = row.get("salesforce_account_id")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return f"row[{index}]"


def build_event(row: Mapping[str, Any], day: date) -> Event:
    """One row -> ``(key, value)``; raises ``ValueError`` with the reason if it is rejected."""
    try:
        return _build(row, coerce_day(day))
    except _Rejected as rejected:
        raise ValueError(rejected.reason) from None


def _build(row: Mapping[str, Any], day: date) -> Event:
    account_id = _text(row, "salesforce_account_id")
    org_id = _text(row, "org_id")
    started = _started_at(row)
    account_name = _text(row, "account_name")
    optional = {name: _optional_text(row, name) for name in OPTIONAL_FIELDS}
    if started.date() != day:
        raise _Rejected(
            f"onboarding_started_at {format_time(started)} is not on {day.isoformat()} (UTC)"
        )
    time = format_time(started)
    document = {
        "id": event_id(account_id, day),
        "type": EVENT_TYPE,
        "time": time,
        "data": {
            "salesforce_account_id": account_id,
            "org_id": org_id,
            "account_name": account_name,
            "plan": optional["plan"],
            "started_at": time,
            "region": optional["region"],
            "csdr_email": optional["csdr_email"],
        },
    }
    return account_id.encode("utf-8"), orjson.dumps(document)


def build_events(rows: Iterable[Mapping[str, Any]], day: date | str) -> OnboardingBatch:
    """Events for the qualifying ``rows`` of ``day``, in row order, and the rejected rows.

    A row is rejected (``(row id, reason)``; the row id is the account id, or ``row[<index>]``
    when that is missing) when a required field (salesforce_account_id, org_id,
    onboarding_started_at, account_name) is null or blank, a field has the wrong type, the
    start is not on ``day`` in UTC, or the account already produced an event in this batch.
    """
    day = coerce_day(day)
    events: list[Event] = []
    rejected: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    for index, row in enumerate(rows):
        try:
            key, value = _build(row, day)
        except _Rejected as exc:
            rejected.append((_row_id(row, index), exc.reason))
            continue
        if key in seen:
            rejected.append((_row_id(row, index), "duplicate salesforce_account_id in batch"))
            continue
        seen.add(key)
        events.append((key, value))
    return OnboardingBatch(events, rejected)


# --- produce -------------------------------------------------------------------------------


def _produce_all(
    producer: BatchProducer, topic: str, events: list[Event], flush_timeout: float
) -> None:
    """Produce and flush ``events``; :class:`OnboardingDeliveryError` if any is not acknowledged."""
    try:
        producer.produce_many(topic, events)
        producer.flush(flush_timeout)
    except ProduceError as exc:
        failures = [
            (f.key.decode("utf-8", "replace") if f.key else "<no key>", f.error)
            for f in exc.failures
        ]
        if not failures and not exc.undelivered:  # fatal or queue full before any report
            failures = [("<batch>", str(exc))]
        raise OnboardingDeliveryError(topic, failures, exc.undelivered, len(events)) from exc


def produce_onboarding_events(
    settings: Settings,
    day: date | str,
    *,
    client: bigquery.Client | None = None,
    producer: BatchProducer | None = None,
    topic: str = ONBOARDING_EVENTS,
    query_timeout: float | None = 300.0,
    flush_timeout: float = 60.0,
) -> OnboardingReport:
    """Query the accounts that started onboarding on ``day``, produce their events to ``topic``.

    Every event is flushed before returning; a query failure raises
    :class:`OnboardingQueryError`, a delivery failure :class:`OnboardingDeliveryError`
    (events already acknowledged stay produced; re-running the day re-produces them with the
    same ids, which downstream de-duplication absorbs). Rejected rows are reported, not raised.
    """
    day = coerce_day(day)
    if client is None:
        try:
            client = make_bigquery_client(settings)
        except _QUERY_FAILURES as exc:
            raise _query_error(day, exc, None) from exc
    result = run_onboarding_query(client, settings, day, timeout=query_timeout)
    batch = build_events(result.rows, day)
    if batch.events:
        _produce_all(
            producer or BatchProducer.from_settings(settings), topic, batch.events, flush_timeout
        )
    return OnboardingReport(
        day=day,
        topic=topic,
        rows=len(result.rows),
        produced=len(batch.events),
        rejected=batch.rejected,
        query_job_id=result.job_id,
        bytes_processed=result.bytes_processed,
        event_ids=batch.event_ids,
    )
