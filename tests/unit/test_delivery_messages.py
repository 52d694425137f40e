"""parse_message / parse_records against hostile bytes: a reason (InvalidMessage, a dead letter),
never another exception; the dedup key of a message."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from alert_platform.delivery.messages import (
    UNPARSEABLE,
    DeadLetter,
    InvalidMessage,
    OutboundMessage,
    format_rfc3339,
    parse_message,
    parse_records,
)
from alert_platform.kafka.records import SourceRecord


def good_value(n: int = 0, **overrides: object) -> dict:
    value = {"alert_id": f"a-{n}", "channel_id": "C1", "text": "hi",
             "event_time": "2025-03-01T12:00:00Z", "pipeline": "p"}  # fmt: skip
    value.update(overrides)
    return value


def record(value: bytes | None, offset: int = 0, key: bytes | None = None) -> SourceRecord:
    return SourceRecord("slack-messages", 0, offset, 0, key, value)


def encoded(value: object) -> bytes:
    return json.dumps(value).encode()


HOSTILE: dict[str, bytes | None] = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "nested object in a field": encoded(good_value(text="x")).replace(
        b'"text": "x"', b'"text": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    ),
    "huge integer": b'{"alert_id": ' + b"9" * 50_000 + b"}",
    "huge offset": encoded(good_value(source={"topic": "t", "partition": 0, "offset": 10**400})),
    "non-UTF-8": b'{"alert_id": "\xff\xfe"}',
    "lone surrogate id": b'{"alert_id": "\\ud800", "channel_id": "C1", "text": "t", '
    b'"event_time": "2025-03-01T12:00:00Z"}',
    "year 0": encoded(good_value(event_time="0000-01-01T00:00:00Z")),
    "year 1 east of UTC": encoded(good_value(event_time="0001-01-01T00:00:00+05:00")),
    "year 9999 west of UTC": encoded(good_value(event_time="9999-12-31T23:00:00-05:00")),
    "event time a number": encoded(good_value(event_time=1e308)),
    "NaN literal": b'{"alert_id": NaN}',
    "dedup key not a string": encoded(good_value(dedup_key=["x"])),
    "dedup key empty": encoded(good_value(dedup_key="  ")),
    "dedup key too long": encoded(good_value(dedup_key="k" * 600)),
    "not an object": b"[1, 2, 3]",
    "tombstone": None,
    "empty": b"",
}


@pytest.mark.parametrize("raw", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_values_are_invalid_messages_never_crashes(raw: bytes | None) -> None:
    with pytest.raises(InvalidMessage):
        parse_message(record(raw))
    letter = parse_records([record(raw)]).dead_letters[0]
    assert letter.error == UNPARSEABLE and letter.detail
    assert isinstance(letter.dlq_value(), bytes)  # the dead letter itself can be produced
    assert letter.key is None or isinstance(letter.key, bytes)


def test_extreme_but_valid_event_times_parse() -> None:
    for text, expected in [
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:00:00Z", datetime(9999, 12, 31, 23, tzinfo=UTC)),
    ]:
        message = parse_message(record(encoded(good_value(event_time=text))))
        assert message.event_time == expected
        # The wire form round-trips (strftime would write year 1 as "1-01-01").
        assert message.to_value()["event_time"] == text
        assert parse_message(record(encoded(message.to_value()))).event_time == expected


def test_parse_records_keeps_every_good_record_among_bad_ones() -> None:
    rng = random.Random(20261203)
    records = []
    for offset in range(300):
        if offset % 3 == 0:
            records.append(record(encoded(good_value(offset)), offset))
        else:
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            records.append(record(noise, offset, key=noise[:8]))
    records.extend(record(raw, 1000 + i) for i, raw in enumerate(HOSTILE.values()))
    batch = parse_records(records)
    assert [m.alert_id for m in batch.messages] == [f"a-{n}" for n in range(0, 300, 3)]
    assert len(batch.dead_letters) == 200 + len(HOSTILE)
    assert all(letter.error == UNPARSEABLE for letter in batch.dead_letters)


def test_dedup_key_is_read_and_defaults_to_the_alert_id() -> None:
    keyed = parse_message(record(encoded(good_value(dedup_key="connector_failure:ab12"))))
    assert (keyed.alert_id, keyed.dedup_key) == ("a-0", "connector_failure:ab12")
    assert keyed.to_value()["dedup_key"] == "connector_failure:ab12"
    plain = parse_message(record(encoded(good_value())))
    assert plain.dedup_key == "a-0"
    built = OutboundMessage("x", "C1", "t", datetime(2025, 1, 1, tzinfo=UTC))
    assert built.dedup_key == "x"


def test_a_dead_letter_of_an_unencodable_message_is_still_produced() -> None:
    deep: dict = {}
    node = deep
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    message = OutboundMessage("deep", "C1", "t", datetime(2025, 1, 1, tzinfo=UTC),
                              blocks=[deep])  # fmt: skip
    letter = DeadLetter.for_message(message, "delivery_error", detail="RecursionError")
    body = json.loads(letter.dlq_value())
    assert (body["alert_id"], body["error"], body["message"]) == ("deep", "delivery_error", None)


def test_format_rfc3339_pads_every_year() -> None:
    assert format_rfc3339(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"
    assert format_rfc3339(datetime(999, 2, 3, 4, 5, 6, 7, tzinfo=UTC)) == (
        "0999-02-03T04:05:06.000007Z"
    )
    assert format_rfc3339(datetime.max.replace(tzinfo=UTC)) == "9999-12-31T23:59:59.999999Z"
