"""Hot-path shortcuts give exactly what the plain code gives: times, table lookups, the
generated Block Kit fill, positional produce calls."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import DividerBlock

from alert_platform.kafka.writer import BatchProducer
from alert_platform.pipelines.connector_failure import _templates
from alert_platform.pipelines.spec import BadRecord, format_rfc3339, parse_rfc3339, rfc3339_utc
from alert_platform.slack.blocks import BlockTemplate
from alert_platform.tables.lookup import LookupTable
from alert_platform.wire import timestamps

# -- rfc3339_utc: the per-second cache ------------------------------------------------------------


def reference(value: object) -> tuple[str, int] | str:
    """What rfc3339_utc must answer: the general path, or the BadRecord reason."""
    try:
        moment = parse_rfc3339(value, "time")
    except BadRecord as exc:
        return exc.reason
    return format_rfc3339(moment), int(moment.timestamp())


def answer(value: object) -> tuple[str, int] | str:
    try:
        return rfc3339_utc(value, "time")
    except BadRecord as exc:
        return exc.reason


def both_ways(value: object) -> list[tuple[str, int] | str]:
    """The answer with a cold cache, then warm (the prefix cached), then for a new suffix."""
    timestamps._SECONDS.clear()
    cold = answer(value)
    warm = answer(value)
    return [cold, warm]


FRACTIONS = ["", ".0", ".5", ".05", ".123", ".1234", ".12345", ".123456", ".1234567", ".000000"]
FRACTIONS += [".999999", ".9999999", ".000001", ".100000"]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize(
    "seconds",
    [
        "2024-05-01T12:34:56",
        "1970-01-01T00:00:00",
        "1969-12-31T23:59:59",  # negative epoch: truncation towards zero
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59",  # float rounding of big epochs
    ],
)
def test_cached_times_equal_the_general_path(seconds: str, fraction: str) -> None:
    value = f"{seconds}{fraction}Z"
    assert both_ways(value) == [reference(value)] * 2
    # another time of the same second once its prefix is cached
    for other in FRACTIONS:
        assert answer(f"{seconds}{other}Z") == reference(f"{seconds}{other}Z")


ARABIC_DIGITS = "\u0661\u0662"  # str.isdigit() but not ASCII
SUFFIXES = ["", "z", "+00:00", "-05:00", ".Z", ".12", ".12z", ".1a2Z", ". 1Z", ".12ZZ", "Z ", "ZZ"]


@pytest.mark.parametrize("suffix", [*SUFFIXES, f".{ARABIC_DIGITS}Z"])
def test_cached_prefix_with_other_suffixes(suffix: str) -> None:
    timestamps._SECONDS.clear()
    answer("2024-05-01T12:34:56Z")  # caches the prefix
    value = f"2024-05-01T12:34:56{suffix}"
    assert answer(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [None, 3, "", "2024-05-01", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00.5Z",
     "2024-05-01T24:00:00Z", "2024-05-01T23:59:60Z", "2024-05-01T12:34:56.5", "x" * 30],
)  # fmt: skip
def test_invalid_times_are_refused_alike(value: object) -> None:
    assert both_ways(value) == [reference(value)] * 2


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    st.integers(min_value=0, max_value=9),
)
def test_cached_times_property(moment: datetime, digits: int) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[:digits]
    value = text + "Z"
    assert both_ways(value) == [reference(value)] * 2
    later = (moment + timedelta(microseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert answer(later) == reference(later)


def test_the_cache_stays_bounded() -> None:
    timestamps._SECONDS.clear()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for second in range(timestamps._SECONDS_MAX + 10):
        answer(format_rfc3339(start + timedelta(seconds=second)))
    assert len(timestamps._SECONDS) <= timestamps._SECONDS_MAX


# -- LookupTable.get / getter --------------------------------------------------------------------


def test_getter_follows_upserts_and_deletes() -> None:
    table = LookupTable("t", "k", ["k", "v"], normalise_key=str.lower)
    get = table.getter()
    assert get("A") is None
    table.upsert("A", {"k": "A", "v": 1})
    table.upsert("b", {"k": "b", "v": 2})
    assert get("a") == {"k": "A", "v": 1} == table.get("A")
    table.delete("a")  # b moves into the hole
    assert get("a") is None
    assert get("B") == {"k": "b", "v": 2}
    first, second = get("b"), get("b")
    assert first == second and first is not second  # a fresh dict every time


def test_getter_of_a_table_from_columns_and_after_pickling() -> None:
    columns = {"__key__": ["x", "y"], "k": ["X", "Y"], 'it\'s "odd"\n': [1, None]}
    table = LookupTable.from_columns("t", "k", columns)
    assert table.getter()("x") == {"k": "X", 'it\'s "odd"\n': 1}
    again = pickle.loads(pickle.dumps(table))
    assert again.get("y") == {"k": "Y", 'it\'s "odd"\n': None}
    again.upsert("z", {"k": "Z"})
    assert again.getter()("z") == {"k": "Z", 'it\'s "odd"\n': None}
    assert table.get("z") is None


# -- BlockTemplate.filler: the generated fill -----------------------------------------------------

VALUES = {
    "connector_name": "postgres-cdc-orders",
    "connector_id": "lcc-9x8y7z",
    "org_id": "org-123",
    "env_id": "env-abc",
    "account_name": "Acme Inc.",
    "old_status": "Provisioning",
    "new_status": "Failed",
    "event_time": "<!date^1714566896^{date_short_pretty} at {time}|2024-05-01T12:34:56Z>",
    "assignee": "Assigned to <@U123> (Jane)",
    "console_url": "https://console.example/o/e/c?a=1&b=2",
}
NASTY = [
    "<!channel>",
    "Tom & Jerry",
    'quotes " and \\ backslash',
    "new\nline\ttab\x00nul",
    "percent %s %% {braces} {0}",
    "שלום \u202eevil\u202c",
    "emoji 🚀 and ünïcödé",
    "",
    "x" * 140,
    "y" * 2500,
    "&" * 700,
]


def both_fills(template: BlockTemplate, values: dict[str, str]) -> tuple[bytes, bytes]:
    ordered = [values[name] for name in template.names]
    fast = orjson.dumps(template.filler()(*ordered))
    general = orjson.dumps(template._fill_general(list(ordered)))
    return fast, general


@pytest.mark.parametrize("nasty", NASTY)
@pytest.mark.parametrize("name", list(VALUES))
def test_generated_fill_equals_the_general_fill(name: str, nasty: str) -> None:
    for template in _templates():
        if name in template.names:
            fast, general = both_fills(template, {**VALUES, name: nasty})
            assert fast == general


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(VALUES)), st.text(max_size=200) | st.just("z" * 3100)))
def test_generated_fill_property(overrides: dict[str, str]) -> None:
    for template in _templates():
        fast, general = both_fills(template, {**VALUES, **overrides})
        assert fast == general


def test_generated_fill_refuses_what_the_general_fill_refuses() -> None:
    plain, _ = _templates()
    ordered = [VALUES[name] for name in plain.names]
    ordered[0] = 42  # not a string: both fail alike
    with pytest.raises(TypeError) as fast:
        plain.filler()(*ordered)
    with pytest.raises(TypeError) as general:
        plain._fill_general(list(ordered))
    assert str(fast.value) == str(general.value)
    with pytest.raises(TypeError):
        plain.filler()(*ordered[1:])  # a value short
    assert plain.fill_seq([VALUES[name] for name in plain.names]) is not None


def test_static_only_template_fills() -> None:
    template = BlockTemplate(lambda _v: [DividerBlock()], ())
    assert orjson.loads(orjson.dumps(template.filler()())) == [{"type": "divider"}]


# -- BatchProducer.produce_many (librdkafka's in-process mock cluster) ----------------------------


def mock_producer(**extra: object) -> Producer:
    config: dict[str, object] = {
        "test.mock.num.brokers": 1,
        "bootstrap.servers": "",
        "log_level": 0,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    }
    return Producer({**config, **extra})


def test_produce_many_reports_every_written_offset() -> None:
    producer = BatchProducer(mock_producer(**{"queue.buffering.max.messages": 50}))
    producer.produce_many("t", ((b"k%d" % i, b"v%d" % i) for i in range(700)))  # queue fills
    producer.produce("t", b"one", b"more")
    report = producer.flush(30)
    assert report.produced == report.delivered == 701
    assert sum(high - low + 1 for low, high in report.written.values()) == 701
    assert producer.pending == 0


def test_positional_produce_partitions_like_keyword_produce() -> None:
    producer = mock_producer()
    where: dict[str, dict[bytes, int]] = {"positional": {}, "keywords": {}}

    def report_to(kind: str):
        return lambda error, message: where[kind].__setitem__(message.key(), message.partition())

    for i in range(300):
        producer.produce("a", b"v", b"key-%d" % i, -1, report_to("positional"))
        producer.produce("b", b"v", b"key-%d" % i, on_delivery=report_to("keywords"))
    assert producer.flush(30) == 0
    assert where["positional"] == where["keywords"]
    assert len(set(where["positional"].values())) > 1  # the partitioner was used
