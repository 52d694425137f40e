"""Delivery building blocks without a network: classification, records, parsing, pacing."""

from __future__ import annotations

import http.client
import json
import logging
from datetime import UTC, datetime
from urllib.error import URLError

import pytest

from alert_platform.delivery.deliverer import ChannelPacer
from alert_platform.delivery.messages import (
    UNPARSEABLE,
    DeadLetter,
    InvalidMessage,
    OutboundMessage,
    parse_message,
    parse_records,
)
from alert_platform.delivery.responses import (
    Outcome,
    build_response_record,
    classify_api_error,
    classify_exception,
    error_code,
    retry_after_seconds,
    slack_date_rfc3339,
)
from alert_platform.kafka.records import SourceRecord
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client, without_retries


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (200, None, Outcome.OK),
        (429, "ratelimited", Outcome.RATE_LIMITED),
        (429, None, Outcome.RATE_LIMITED),
        (200, "ratelimited", Outcome.RATE_LIMITED),
        (500, None, Outcome.SERVER_ERROR),
        (503, "service_unavailable", Outcome.SERVER_ERROR),
        (200, "internal_error", Outcome.SERVER_ERROR),
        (200, "service_unavailable", Outcome.SERVER_ERROR),
        (200, "request_timeout", Outcome.SERVER_ERROR),
        (200, "fatal_error", Outcome.SERVER_ERROR),
        (200, "Received a response in a non-JSON format: <html>", Outcome.SERVER_ERROR),
        (200, "channel_not_found", Outcome.PERMANENT),
        (200, "not_in_channel", Outcome.PERMANENT),
        (200, "is_archived", Outcome.PERMANENT),
        (200, "invalid_blocks", Outcome.PERMANENT),
        (200, "msg_too_long", Outcome.PERMANENT),
        (200, "no_text", Outcome.PERMANENT),
        (200, "invalid_arguments", Outcome.PERMANENT),
        (200, "some_error_we_never_heard_of", Outcome.PERMANENT),
        (200, "invalid_auth", Outcome.FATAL_AUTH),
        (200, "not_authed", Outcome.FATAL_AUTH),
        (200, "token_revoked", Outcome.FATAL_AUTH),
        (200, "account_inactive", Outcome.FATAL_AUTH),
        (200, "missing_scope", Outcome.FATAL_AUTH),
        (401, "invalid_auth", Outcome.FATAL_AUTH),
    ],
)
def test_classify_api_error(status: int, error: str | None, expected: Outcome) -> None:
    assert classify_api_error(status, error) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError("timed out"), Outcome.TIMEOUT),
        (URLError(TimeoutError("connect timed out")), Outcome.TIMEOUT),
        (URLError(ConnectionRefusedError(111, "refused")), Outcome.CONNECTION),
        (ConnectionResetError(104, "reset"), Outcome.CONNECTION),
        (http.client.RemoteDisconnected("closed"), Outcome.CONNECTION),
        (http.client.IncompleteRead(b""), Outcome.CONNECTION),
        (ValueError("a bug"), None),
        (KeyError("a bug"), None),
    ],
)
def test_classify_exception(exc: BaseException, expected: Outcome | None) -> None:
    assert classify_exception(exc) is expected


def test_outcome_properties() -> None:
    assert {o for o in Outcome if o.retryable} == {
        Outcome.RATE_LIMITED,
        Outcome.SERVER_ERROR,
        Outcome.TIMEOUT,
        Outcome.CONNECTION,
    }
    # A 429 certainly posted nothing; a 5xx or lost answer may have.
    assert not Outcome.RATE_LIMITED.maybe_posted
    assert Outcome.SERVER_ERROR.maybe_posted and Outcome.TIMEOUT.maybe_posted
    assert not Outcome.PERMANENT.maybe_posted and not Outcome.FATAL_AUTH.maybe_posted


def test_error_code() -> None:
    assert error_code(Outcome.PERMANENT, 200, "channel_not_found") == "channel_not_found"
    assert error_code(Outcome.TIMEOUT, None, None) == "timeout"
    assert error_code(Outcome.CONNECTION, None, None) == "connection_error"
    assert error_code(Outcome.SERVER_ERROR, 502, None) == "http_502"
    assert error_code(Outcome.RATE_LIMITED, 429, None) == "ratelimited"


def test_retry_after_seconds() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": ["2"]}) == 2.0
    assert retry_after_seconds({"Retry-After": "soon"}, default=1.5) == 1.5
    assert retry_after_seconds({}, default=1.0) == 1.0
    assert retry_after_seconds(None) == 1.0


def test_slack_date_and_response_record() -> None:
    assert slack_date_rfc3339("Tue, 25 Nov 2025 10:00:01 GMT") == "2025-11-25T10:00:01Z"
    assert slack_date_rfc3339("garbage") is None
    assert slack_date_rfc3339(None) is None
    record = build_response_record(
        alert_id="a-1",
        ok=True,
        channel="C1",
        ts="1.000001",
        error=None,
        attempts=2,
        date_header="Tue, 25 Nov 2025 10:00:01 GMT",
        delivered_at=datetime(2025, 11, 25, 10, 0, 1, 500, tzinfo=UTC),
    )
    assert record.pop("outcome") == "ok" and len(record.pop("response_id")) == 32
    assert record == {
        "dedup_key": None,
        "event_time": None,
        "alert_id": "a-1",
        "ok": True,
        "channel": "C1",
        "ts": "1.000001",
        "error": None,
        "attempts": 2,
        "slack_date": "2025-11-25T10:00:01Z",
        "delivered_at": "2025-11-25T10:00:01.000500Z",
    }
    json.dumps(record)  # JSON-ready


def _record(value: object, offset: int = 7) -> SourceRecord:
    raw = value if isinstance(value, bytes) or value is None else json.dumps(value).encode()
    return SourceRecord("slack-messages", 2, offset, 0, b"k", raw)


VALID = {
    "alert_id": "connector_failure:org-1:abc",
    "pipeline": "connector_failure",
    "channel_id": "C0OPS",
    "text": "Connector failed",
    "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}],
    "source": {"topic": "data-notifications-pipeline", "partition": 1, "offset": 42,
               "timestamp": 1700000000000},
    "created_at": "2025-01-01T00:00:05Z",
    "event_time": "2025-01-01T02:00:00+02:00",
}  # fmt: skip


def test_parse_message() -> None:
    message = parse_message(_record(VALID))
    assert message.alert_id == VALID["alert_id"]
    assert message.event_time == datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
    assert message.position == "slack-messages:2:7"
    assert message.source_ref == "data-notifications-pipeline:1:42"
    assert message.blocks == VALID["blocks"]
    assert message.to_value()["event_time"] == "2025-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({**VALID, "alert_id": ""}, "alert_id"),
        ({**VALID, "channel_id": None}, "channel_id"),
        ({**VALID, "event_time": "yesterday"}, "event_time"),
        ({k: v for k, v in VALID.items() if k != "event_time"}, "event_time"),
        ({**VALID, "text": 5}, "text"),
        ({**VALID, "text": "", "blocks": None}, "no blocks"),
        ({**VALID, "blocks": "nope"}, "blocks"),
        ({**VALID, "source": {"topic": "t", "partition": -1, "offset": 1}}, "partition"),
    ],
)
def test_invalid_messages_are_dead_letters(value: object, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse_message(_record(value))
    batch = parse_records([_record(VALID, 1), _record(value, 2)])
    assert [m.position for m in batch.messages] == ["slack-messages:2:1"]
    (letter,) = batch.dead_letters
    assert letter.error == UNPARSEABLE and reason.split()[0] in letter.detail
    assert letter.position == "slack-messages:2:2"
    assert json.loads(letter.dlq_value())["error"] == UNPARSEABLE


def test_dead_letter_for_message() -> None:
    message = OutboundMessage("a-1", "C404", "hi", datetime(2025, 1, 1, tzinfo=UTC))
    letter = DeadLetter.for_message(message, "channel_not_found", attempts=1)
    body = json.loads(letter.dlq_value())
    assert letter.key == b"a-1"
    assert body["error"] == "channel_not_found" and body["message"]["alert_id"] == "a-1"


def test_channel_pacer_spaces_posts_per_channel() -> None:
    now = [100.0]
    pacer = ChannelPacer(rate=1.0, burst=2, clock=lambda: now[0])
    assert [pacer.reserve("C1") for _ in range(4)] == [0.0, 0.0, 1.0, 2.0]
    assert pacer.reserve("C2") == 0.0  # other channels are independent
    now[0] += 10
    assert pacer.reserve("C1") == 0.0  # refilled (capped at burst)
    pacer.penalize("C1", 5.0)
    assert pacer.reserve("C1") == pytest.approx(5.0)
    assert pacer.reserve("C1") == pytest.approx(6.0)
    assert pacer.reserve("C2") == 0.0


def test_client_never_shows_the_token(caplog: pytest.LogCaptureFixture) -> None:
    secret = "xoxb-secret-token-value"
    settings = Settings().with_overrides(slack_bot_token=secret, slack_api_url="http://h:1/api")
    client = make_web_client(settings, timeout=3)
    assert client.base_url == "http://h:1/api/" and client.timeout == 3
    kinds = {type(h).__name__ for h in client.retry_handlers}
    assert kinds == {"ConnectionErrorRetryHandler", "ServerErrorRetryHandler"}
    bare = without_retries(client)
    assert bare.retry_handlers == [] and bare.token == secret and bare.timeout == 3
    assert secret not in repr(client) and secret not in repr(bare)
    assert secret not in repr(settings)
    caplog.set_level(logging.DEBUG)
    assert secret not in caplog.text
