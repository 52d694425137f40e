"""The wire contracts (alert_platform.wire): one definition per record, the bytes on the topics
unchanged, the engine's generated fast path equal to the contract, one RFC 3339 rule."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import msgspec
import orjson
import pytest

from alert_platform.delivery.messages import (
    DeadLetter,
    InvalidMessage,
    OutboundMessage,
    message_from_value,
    parse_message,
)
from alert_platform.delivery.responses import build_response_record
from alert_platform.explain import explainer
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines import spec
from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
from alert_platform.pipelines.engine import DeadLetter as EngineDeadLetter
from alert_platform.pipelines.engine import encode_dead_letter, enrich_batch
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.slack import blocks
from alert_platform.topics import NOTIFICATIONS
from alert_platform.wire import (
    AlertDeadLetterHeaders,
    BadRecord,
    MessageDeadLetter,
    SlackMessage,
    SlackResponse,
    SourceRef,
    decode_alert_dead_letter,
    decode_message_dead_letter,
    decode_slack_message,
    decode_slack_response,
    encode_slack_message,
    encode_slack_message_at,
    encode_slack_response,
    format_rfc3339,
    parse_rfc3339,
    parse_rfc3339_utc,
    slack_message_value,
)
from tests.unit.pipeline_helpers import lookup_tables

NOW = datetime(2024, 6, 1, 8, 0, 0, tzinfo=UTC)
ASSIGNMENTS = [
    {"org_id": "org-1", "csdr_email": "jane.doe@example.com", "csdr_name": "Jane",
     "account_name": "Acme é ünïcode ‮"},
    {"org_id": "org-2", "csdr_email": "nobody@example.com", "csdr_name": "No One",
     "account_name": "Fallback & Co"},
]  # fmt: skip


def event(org: str, name: str) -> bytes:
    labels = {"connector_old_status": "Provisioning", "connector_new_status": "Failed",
              "org_id": org, "env_id": "env-a", "connector_id": "lcc-1",
              "connector_name": name}  # fmt: skip
    return orjson.dumps(
        {"id": "e", "time": "2024-06-01T07:59:00.5+02:00", "data": {"labels": labels}}
    )


def engine_alerts() -> list[bytes]:
    records = [
        SourceRecord(NOTIFICATIONS, 1, 10, 1717228740000, b"org-1", event("org-1", "cdc “x” <y>")),
        SourceRecord(NOTIFICATIONS, 1, 11, None, b"org-2", event("org-2", "s3\x00sink\n1e16")),
    ]
    options = RenderOptions(console_url_template="https://c/{org_id}/{env_id}/{connector_id}")
    result = enrich_batch(CONNECTOR_FAILURE, records, lookup_tables(ASSIGNMENTS), options, now=NOW)
    assert result.counts.alerts == 2 and result.counts.routed_to_fallback == 1
    return [alert.value for alert in result.alerts]


# -- slack-messages ------------------------------------------------------------------------------


def test_engine_values_are_the_contract() -> None:
    for value in engine_alerts():
        message = decode_slack_message(value)
        # the same JSON (the engine's blocks are pre-encoded fragments: escapes may differ)
        assert orjson.loads(encode_slack_message(message)) == orjson.loads(value)
        keys = list(orjson.loads(value))
        assert keys == [f for f in SlackMessage.__struct_fields__ if f in keys]
        assert keys[:9] == list(SlackMessage.__struct_fields__[:9])
        assert list(orjson.loads(value)["source"]) == list(SourceRef.__struct_fields__)
    fallback = decode_slack_message(engine_alerts()[1])
    assert fallback.intended_for == {"email": "nobody@example.com", "name": "No One"}


@pytest.mark.parametrize("intended_for", [None, {"email": "é@x", "name": None}])
def test_generated_fast_path_bytes_equal_the_struct_encoding(intended_for: dict | None) -> None:
    blocks_ = [{"type": "section", "text": {"type": "mrkdwn", "text": "é “q” \u2028 \x01 1e16"}}]
    parts = ("a-1", "p:00ff", "p", "U1", "t é", blocks_)
    source = ("topic", 3, 2**63 - 1, 1.5e16)
    times = ("2024-06-01T08:00:00Z", "0001-01-01T00:00:00.000001Z")
    fast = encode_slack_message_at(*parts, *source, *times, intended_for)
    message = SlackMessage(
        alert_id=parts[0], dedup_key=parts[1], pipeline=parts[2], channel_id=parts[3],
        text=parts[4], blocks=blocks_, source=SourceRef(*source), created_at=times[0],
        event_time=times[1], **({} if intended_for is None else {"intended_for": intended_for}),
    )  # fmt: skip
    assert fast == encode_slack_message(message)
    assert decode_slack_message(fast) == message


def test_outbound_message_wire_form_is_the_contract() -> None:
    for value in engine_alerts():
        message = parse_message(SourceRecord("slack-messages", 0, 5, 0, None, value))
        wire = message.to_value()
        assert list(wire) == list(SlackMessage.__struct_fields__[:9])
        expected = orjson.loads(value)
        expected.pop("intended_for", None)
        assert wire == expected  # canonical times round-trip exactly
    built = OutboundMessage("a", "C1", "t", datetime(2025, 1, 1, tzinfo=UTC))
    assert slack_message_value("a", "a", "", "C1", "t", None, None, None,
                               "2025-01-01T00:00:00Z") == built.to_value()  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        {"alert_id": "a", "channel_id": "C1", "text": "t", "event_time": "2025-01-01T00:00:00Z"},
        {"alert_id": "a", "channel_id": "C1", "text": "t", "event_time": "2025-01-01T00:00:00Z",
         "pipeline": None, "dedup_key": "p:1", "extra": [1, {"x": 2}], "intended_for": "odd",
         "source": {"topic": "t", "partition": 0, "offset": 2**63 - 1, "timestamp": "x"},
         "created_at": "", "blocks": []},
        {"alert_id": "a", "channel_id": "C1", "text": "", "event_time": "2025-01-01T00:00:00+05:30",
         "blocks": [{"type": "divider"}], "pipeline": 0},
    ],
)  # fmt: skip
def test_typed_decoder_reads_what_the_generic_checks_read(value: dict) -> None:
    raw = json.dumps(value).encode()
    typed = parse_message(SourceRecord("slack-messages", 0, 1, 0, None, raw))
    generic = message_from_value(json.loads(raw), position="slack-messages:0:1", raw=raw)
    assert typed == generic


# -- one RFC 3339 rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["2024-05-01T12:34:56", "2024-05-01", "20240501T123456Z", "2024-05-01T12:34Z",
     "2024-05-01T12:34:56+0200", "yesterday", ""],
)  # fmt: skip
def test_no_offset_no_timestamp_everywhere(text: str) -> None:
    """A time without an offset (or not RFC 3339 at all) is refused by every reader, with a
    reason naming the field: never read as UTC."""
    with pytest.raises(BadRecord, match="time is not an RFC 3339 timestamp"):
        spec.parse_rfc3339(text)
    with pytest.raises(BadRecord, match="time is not an RFC 3339 timestamp"):
        spec.rfc3339_utc(text)
    value = {"alert_id": "a", "channel_id": "C1", "text": "t", "event_time": text}
    with pytest.raises(InvalidMessage, match="event_time is not an RFC 3339 timestamp"):
        parse_message(SourceRecord("slack-messages", 0, 1, 0, None, json.dumps(value).encode()))
    assert explainer._moment(text) is None


def test_accepted_forms_and_utc_range() -> None:
    expected = datetime(2024, 5, 1, 10, 34, 56, 123456, tzinfo=UTC)
    for text in ["2024-05-01T12:34:56.1234569+02:00", "2024-05-01 10:34:56.123456z",
                 "2024-05-01t10:34:56.123456Z"]:  # fmt: skip
        assert parse_rfc3339_utc(text) == expected
        assert format_rfc3339(parse_rfc3339(text)) == "2024-05-01T10:34:56.123456Z"
    with pytest.raises(
        BadRecord, match="'9999-12-31T23:00:00-05:00' is out of the supported range"
    ):
        parse_rfc3339_utc("9999-12-31T23:00:00-05:00", "event_time")
    with pytest.raises(BadRecord, match="created_at missing or null"):
        parse_rfc3339(None, "created_at")
    with pytest.raises(BadRecord, match="event time is a number, expected an RFC 3339 string"):
        parse_rfc3339(1.5, "event time")


# -- slack-responses -----------------------------------------------------------------------------


def test_response_record_is_the_contract_and_its_bytes_are_unchanged() -> None:
    record = build_response_record(
        alert_id="é-1", ok=True, channel="C1", ts="1.2", error=None, attempts=1,
        date_header="Tue, 25 Nov 2025 10:00:01 GMT", delivered_at=NOW, dedup_key="p:ab",
        event_time=NOW,
    )  # fmt: skip
    assert list(record) == list(SlackResponse.__struct_fields__)
    raw = encode_slack_response(record)
    assert raw == json.dumps(record, separators=(",", ":")).encode()  # as produced before
    decoded = decode_slack_response(raw)
    assert encode_slack_response(decoded) == raw
    assert (decoded.outcome, decoded.slack_date, decoded.alert_id) == (
        "ok",
        "2025-11-25T10:00:01Z",
        "é-1",
    )


# -- dead letters --------------------------------------------------------------------------------


def test_slack_messages_dlq_value_is_the_contract() -> None:
    raw = b'{"alert_id": "\xc3\xa9", "text": NaN, "n": 1e400}'
    letter = DeadLetter("é", "slack-messages:0:3", "unparseable_message", "why", raw=raw)
    value = letter.dlq_value()
    assert value.isascii()  # compact, ASCII-escaped JSON as before
    body = json.loads(value)
    assert list(body) == list(MessageDeadLetter.__struct_fields__)
    assert body["message"]["alert_id"] == "é"
    decoded = decode_message_dead_letter(json.dumps({**body, "message": None}))
    assert (decoded.alert_id, decoded.position, decoded.error) == (
        "é",
        "slack-messages:0:3",
        "unparseable_message",
    )
    parse_rfc3339(decoded.failed_at)


def test_alerts_dlq_headers_are_the_contract() -> None:
    class Odd:
        def __str__(self) -> str:
            raise RuntimeError("no")

    record = SourceRecord(NOTIFICATIONS, 3, 9, 1234, b"k", b"v")
    letter = encode_dead_letter(EngineDeadLetter(record, "é" * 2000, Odd(), "p"))  # type: ignore[arg-type]
    assert [name for name, _ in letter.headers] == list(AlertDeadLetterHeaders.__struct_fields__)
    headers = decode_alert_dead_letter(letter.headers)
    assert len(headers.error) == 1000 and headers.error.endswith("…")
    assert (headers.error_stage, headers.source_topic, headers.source_offset) == (
        "(Odd)",
        NOTIFICATIONS,
        "9",
    )
    assert (letter.key, letter.value) == (b"k", b"v")


# -- one place -----------------------------------------------------------------------------------


def test_the_wire_module_imports_no_other_platform_module() -> None:
    code = (
        "import sys, alert_platform.wire; "
        "print(sorted(m for m in sys.modules if m.startswith('alert_platform.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert all(name.startswith("alert_platform.wire") for name in eval(out.stdout)), out.stdout


def test_block_kit_limits_are_written_once() -> None:
    from alert_platform.local.sandbox import params as methods

    assert (methods.MAX_BLOCKS, methods.MAX_SECTION_TEXT, methods.MAX_FIELD_TEXT) == (
        blocks.MAX_BLOCKS, blocks.SECTION_TEXT_MAX, blocks.SECTION_FIELD_MAX
    )  # fmt: skip
    assert (methods.MAX_HEADER_TEXT, methods.MAX_FIELDS, methods.MAX_TEXT) == (
        blocks.HEADER_TEXT_MAX, blocks.SECTION_FIELDS_MAX, blocks.MESSAGE_TEXT_LIMIT
    )  # fmt: skip


def test_decoders_refuse_what_does_not_fit() -> None:
    for raw in (b"[1]", b'{"alert_id": 1}', b"{"):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decode_slack_message(raw)
