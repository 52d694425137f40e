"""What a Slack Web API outcome means for delivery, and the ``slack-responses`` record.

:func:`classify_api_error` / :func:`classify_exception` map one call's outcome to an
:class:`Outcome`; the deliverer acts on the outcome only:

* ``RATE_LIMITED``  429 / ``ratelimited``: wait ``Retry-After`` for that channel, retry.
* ``SERVER_ERROR``  5xx, ``internal_error``, ``service_unavailable``, ``request_timeout``,
  ``fatal_error``, a non-JSON body: retry with backoff (the post may have happened).
* ``TIMEOUT``       no answer in time: retry with backoff (the post may have happened).
* ``CONNECTION``    connection refused/reset, broken HTTP: retry with backoff.
* ``PERMANENT``     the message cannot be delivered as it is (``channel_not_found``,
  ``not_in_channel``, ``is_archived``, ``invalid_blocks``, ``msg_too_long``, ``no_text``,
  ``invalid_arguments``, any unknown error): dead-letter it, keep going.
* ``FATAL_AUTH``    the token is unusable (``invalid_auth``, ``token_revoked``, ...): stop.

``Retry-After`` is bounded (:func:`retry_after_seconds`): whatever Slack or a proxy sends
(``inf``, ``nan``, negative, huge, garbage), the wait is within ``[1, maximum]`` seconds.

The ``slack-responses`` record (:func:`build_response_record`, keyed by ``alert_id``; the
contract is :class:`alert_platform.wire.SlackResponse`, encoded by
:func:`alert_platform.wire.encode_slack_response`), one per attempt outcome::

    {"response_id": "<32 hex>",      # stable: the same outcome written again has the same id
     "outcome": "ok" | "retry" | "failed" | "stale" | "duplicate",
     "alert_id": "...", "dedup_key": "..." | null, "event_time": "RFC 3339" | null,
     "ok": bool, "channel": "C..." | null, "ts": "..." | null, "error": "code" | null,
     "attempts": int, "slack_date": "RFC 3339" | null, "delivered_at": "RFC 3339" | null}

``outcome``: ``ok`` posted (or found posted); ``retry`` a transient failure (429, 5xx, timeout,
connection), the message is retried; ``failed`` refused for good (dead-lettered) or the token is
unusable; ``stale`` older than the maximum alert age, not posted; ``duplicate`` already delivered.
Records are written at least once (an outbox in the ledger database, see
:mod:`alert_platform.delivery.outbox`): a reader drops repeats by ``response_id``.
"""

from __future__ import annotations

import enum
import hashlib
import http.client
import math
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.error import URLError

import orjson

from alert_platform.wire import SlackResponse, format_rfc3339, slack_response_value


class Outcome(enum.Enum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    PERMANENT = "permanent"
    FATAL_AUTH = "fatal_auth"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE

    @property
    def maybe_posted(self) -> bool:
        """Could the failed call have posted anyway? (Slack has no idempotency key.)"""
        return self in (Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION)


_RETRYABLE = frozenset(
    {Outcome.RATE_LIMITED, Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONNECTION}
)

FATAL_AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
        "org_login_required",
        "ekm_access_denied",
        "team_access_not_granted",
        "access_denied",
        "two_factor_setup_required",
    }
)
SERVER_ERRORS = frozenset(
    {"internal_error", "service_unavailable", "request_timeout", "fatal_error", "timeout"}
)
RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited"})
# Documented permanent payload/channel errors; unknown errors are permanent too.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "invalid_blocks_format",
        "msg_too_long",
        "no_text",
        "invalid_arguments",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "too_many_attachments",
        "restricted_action",
        "cannot_reply_to_message",
        "duplicate_channel_not_found",
        "invalid_arg_name",
        "invalid_form_data",
        "invalid_post_type",
        "missing_post_type",
        "invalid_json",
        "json_not_object",
    }
)
# slack_sdk turns a non-JSON body into {"ok": false, "error": "Received a response in a ..."}.
_NON_JSON_PREFIX = "Received a response in a non-JSON format"


def classify_api_error(status: int | None, error: str | None) -> Outcome:
    """Outcome of a call that got an HTTP answer: ``status`` and the body's ``error`` code."""
    if status == 429 or (error or "") in RATE_LIMIT_ERRORS:
        return Outcome.RATE_LIMITED
    code = error or ""
    if code in FATAL_AUTH_ERRORS:
        return Outcome.FATAL_AUTH
    if status is not None and status >= 500:
        return Outcome.SERVER_ERROR
    if code in SERVER_ERRORS or code.startswith(_NON_JSON_PREFIX):
        return Outcome.SERVER_ERROR
    if status == 200 and not code:
        return Outcome.OK
    return Outcome.PERMANENT


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | socket.timeout):
        return True
    return isinstance(exc, URLError) and isinstance(exc.reason, TimeoutError | socket.timeout)


def classify_exception(exc: BaseException) -> Outcome | None:
    """Outcome of a call that raised before any HTTP answer; ``None`` when not a transport
    error (a bug: let it propagate)."""
    if _is_timeout(exc):
        return Outcome.TIMEOUT
    if isinstance(exc, URLError | ConnectionError | http.client.HTTPException | OSError):
        return Outcome.CONNECTION
    return None


def error_code(outcome: Outcome, status: int | None, error: str | None) -> str:
    """A short error code for records: Slack's own code, else one for the transport."""
    if error:
        return error[:200]
    if outcome is Outcome.RATE_LIMITED:
        return "ratelimited"
    if outcome is Outcome.TIMEOUT:
        return "timeout"
    if outcome is Outcome.CONNECTION:
        return "connection_error"
    if status is not None:
        return f"http_{status}"
    return outcome.value


RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 120.0


def _retry_after_value(value: Any) -> float | None:
    """Seconds in one ``Retry-After`` value (delta-seconds or an HTTP date); ``None`` if neither."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip()[:64]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def retry_after_seconds(
    headers: Mapping[str, Any] | None,
    default: float = 1.0,
    maximum: float = RETRY_AFTER_MAX,
) -> float:
    """``Retry-After`` (seconds) from response headers, always within ``[1, maximum]``.

    ``default`` (also bounded) when the header is missing, malformed or ``nan``; ``inf`` and huge
    values give ``maximum`` (``settings.slack_retry_after_max_s``), negative ones 1.
    """
    top = maximum if math.isfinite(maximum) and maximum >= RETRY_AFTER_MIN else RETRY_AFTER_MAX
    seconds: float | None = None
    for name, value in (headers or {}).items():
        if str(name).lower() == "retry-after":
            seconds = _retry_after_value(value)
            break
    if seconds is None or math.isnan(seconds):
        seconds = default if isinstance(default, int | float) and not math.isnan(default) else 1.0
    return min(top, max(RETRY_AFTER_MIN, seconds))


def header(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A response header, case-insensitively (slack_sdk keeps the server's spelling)."""
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            return None if value is None else str(value)
    return None


def slack_date_rfc3339(value: str | None) -> str | None:
    """Slack's HTTP ``Date`` header (``Tue, 25 Nov 2025 10:00:00 GMT``) as RFC 3339."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return format_rfc3339(parsed)


OUTCOME_OK = "ok"
OUTCOME_RETRY = "retry"
OUTCOME_FAILED = "failed"
OUTCOME_STALE = "stale"
OUTCOME_DUPLICATE = "duplicate"
STALE_ERROR = "stale"
_DUPLICATE_ERRORS = frozenset({"duplicate", "already_delivered", "suppressed_repeat"})
_TRANSPORT_RETRY_ERRORS = frozenset({"timeout", "connection_error"})


def response_outcome(ok: bool, error: str | None) -> str:
    """The record's ``outcome`` for what the deliverer reports (``ok`` and the error code)."""
    if ok:
        return OUTCOME_OK
    code = error or ""
    if code == STALE_ERROR:
        return OUTCOME_STALE
    if code in _DUPLICATE_ERRORS:
        return OUTCOME_DUPLICATE
    if code in _TRANSPORT_RETRY_ERRORS or code.startswith("http_5"):
        return OUTCOME_RETRY
    if classify_api_error(None, code).retryable:
        return OUTCOME_RETRY
    return OUTCOME_FAILED


def _rfc3339_or_none(value: datetime | None) -> str | None:
    if value is None:
        return None
    try:
        return format_rfc3339(value)
    except (OverflowError, ValueError):  # year 1 / 9999 with an offset: keep it readable
        return value.isoformat()


def response_id(
    *,
    key: str,
    event_time: str | None,
    outcome: str,
    channel: str | None,
    ts: str | None,
    error: str | None,
    attempts: int,
) -> str:
    """A stable id of one outcome: the same outcome written again has the same id."""
    material = orjson.dumps([key, event_time, outcome, channel, ts, error, attempts])
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def build_response_record(
    *,
    alert_id: str,
    ok: bool,
    channel: str | None,
    ts: str | None,
    error: str | None,
    attempts: int,
    date_header: str | None = None,
    delivered_at: datetime | None = None,
    dedup_key: str | None = None,
    event_time: datetime | None = None,
    outcome: str | None = None,
) -> dict[str, Any]:
    """The ``slack-responses`` value for one attempt outcome (module docstring): the fields
    ``alert_id, ok, channel, ts, error, attempts, slack_date, delivered_at`` plus ``response_id``,
    ``outcome`` (``outcome`` given, else :func:`response_outcome`), ``dedup_key`` and
    ``event_time``. ``slack_date`` is Slack's HTTP ``Date`` header in RFC 3339 (``None`` without
    a response)."""
    kind = outcome or response_outcome(ok, error)
    event = _rfc3339_or_none(event_time)
    record = SlackResponse(
        response_id=response_id(
            key=dedup_key or alert_id,
            event_time=event,
            outcome=kind,
            channel=channel,
            ts=ts,
            error=error,
            attempts=attempts,
        ),
        outcome=kind,
        alert_id=alert_id,
        dedup_key=dedup_key,
        event_time=event,
        ok=ok,
        channel=channel,
        ts=ts,
        error=error,
        attempts=attempts,
        slack_date=slack_date_rfc3339(date_header),
        delivered_at=_rfc3339_or_none(delivered_at),
    )
    return slack_response_value(record)
