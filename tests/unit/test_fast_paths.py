"""Hot-path shortcuts give exactly what the plain code gives: times, table lookups."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alert_platform.pipelines import spec
from alert_platform.pipelines.spec import BadRecord, format_rfc3339, parse_rfc3339, rfc3339_utc
from alert_platform.tables.lookup import LookupTable

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
    spec._SECONDS.clear()
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
    spec._SECONDS.clear()
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
    spec._SECONDS.clear()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for second in range(spec._SECONDS_MAX + 10):
        answer(format_rfc3339(start + timedelta(seconds=second)))
    assert len(spec._SECONDS) <= spec._SECONDS_MAX


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
