"""The tables the delivery sensor asks instead of Kafka (handled ranges, written alerts), on
SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from alert_platform.delivery.handled_ranges import HANDLED_RANGES, HandledRanges, covered
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.delivery.runner import ranges_already_delivered
from alert_platform.delivery.written_alerts import WrittenAlerts
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.settings import Settings
from tests.postgres import PG_URL, postgres_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    postgres_engine().dispose()
    return PG_URL


@pytest.fixture
def table(url: str) -> Iterator[HandledRanges]:
    with HandledRanges(url) as handled:
        yield handled


def _topic() -> str:
    """A topic name of this test alone (the PostgreSQL database is shared)."""
    return f"slack-messages-{uuid.uuid4().hex[:8]}"


def test_covered_needs_the_union_to_leave_no_hole() -> None:
    rng = OffsetRange("t", 0, 10, 20)
    assert covered(rng, [(10, 20)])
    assert covered(rng, [(15, 25), (5, 12), (12, 15)])
    assert not covered(rng, [(10, 14), (15, 20)])  # offset 14 missing
    assert not covered(rng, [(11, 20)])
    assert not covered(rng, [])


def test_a_range_is_handled_once_recorded_ranges_cover_it(table: HandledRanges) -> None:
    topic = _topic()
    first, second = OffsetRange(topic, 0, 0, 5), OffsetRange(topic, 0, 5, 9)
    table.record([first], topic_id="id-1", run_id="run-a")
    table.record([second, OffsetRange(topic, 1, 0, 3)], topic_id="id-1", run_id="run-b")
    sensor_ranges = [
        OffsetRange(topic, 0, 0, 9),  # two inline deliveries together
        OffsetRange(topic, 0, 3, 10),  # offset 9 delivered by no run
        OffsetRange(topic, 1, 0, 3),
        OffsetRange(topic, 2, 0, 3),  # another partition
    ]
    assert table.handled(sensor_ranges, topic_id="id-1") == {sensor_ranges[0], sensor_ranges[2]}


def test_a_recreated_topic_is_not_covered_by_the_old_topic_ranges(table: HandledRanges) -> None:
    topic = _topic()
    table.record([OffsetRange(topic, 0, 0, 100)], topic_id="old-id")
    assert table.handled([OffsetRange(topic, 0, 0, 10)], topic_id="new-id") == set()
    assert table.handled([OffsetRange(topic, 0, 0, 10)], topic_id="old-id") == {
        OffsetRange(topic, 0, 0, 10)
    }


def test_prune_deletes_rows_recorded_before_the_cutoff_in_batches(
    table: HandledRanges,
) -> None:
    topic = _topic()
    table.record([OffsetRange(topic, 0, n, n + 1) for n in range(5)])
    old = datetime.now(UTC) - timedelta(days=3)
    t = HANDLED_RANGES.c
    with table.engine.begin() as conn:
        ids = list(conn.execute(sa.select(t.id).where(t.topic == topic).order_by(t.id)).scalars())
        conn.execute(HANDLED_RANGES.update().where(t.id.in_(ids[:3])).values(recorded_at=old))
    assert table.prune(old + timedelta(seconds=1), batch_size=2) == 3
    assert table.handled([OffsetRange(topic, 0, 3, 5)]) == {OffsetRange(topic, 0, 3, 5)}
    assert table.handled([OffsetRange(topic, 0, 0, 1)]) == set()


def test_ranges_already_delivered_answers_from_the_table_and_never_raises(tmp_path: Path) -> None:
    settings = Settings(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    done, other = OffsetRange("slack-messages", 0, 0, 4), OffsetRange("slack-messages", 0, 4, 6)
    with HandledRanges(settings.effective_ledger_url) as table:
        table.record([done], topic_id="tid")
    assert ranges_already_delivered(settings, [done, other], "tid") == {done}
    broken = settings.with_overrides(ledger_url="sqlite:////proc/nope/ledger.sqlite3")
    assert ranges_already_delivered(broken, [done], "tid") == set()


def _message(n: int) -> OutboundMessage:
    when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n)
    return OutboundMessage(f"alert-{n}", "C1", "text", when, dedup_key=f"p:{n}")


class _AllDelivered:
    """A ledger that holds every message as delivered."""

    def duplicates(self, messages, window):
        return [object() for _ in messages]


def test_written_alerts_cover_a_range_once_the_ledger_holds_them_all(url: str) -> None:
    topic = _topic()
    written = [OffsetRange(topic, 0, 10, 12), OffsetRange(topic, 1, 0, 1)]
    window = timedelta(hours=24)
    with WrittenAlerts(url) as table, DeliveryLedger(url) as ledger:
        table.record(written, [_message(n) for n in range(3)], topic_id="tid", run_id="run")
        asked = [OffsetRange(topic, 0, 10, 12), OffsetRange(topic, 0, 10, 13)]
        # Nothing delivered yet (a real ledger, read while no transaction of the table is open).
        assert table.delivered(asked, ledger, window, topic_id="tid") == set()
        every = _AllDelivered()
        assert table.delivered(asked, every, window, topic_id="tid") == {asked[0]}  # type: ignore[arg-type]
        assert table.delivered(asked, every, window, topic_id="other") == set()  # type: ignore[arg-type]
        assert table.prune(datetime.now(UTC) + timedelta(seconds=1)) >= 1
        assert table.delivered(asked, every, window, topic_id="tid") == set()  # type: ignore[arg-type]
