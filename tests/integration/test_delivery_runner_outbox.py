"""The delivery runner on the real local stack: the ``slack-responses`` outbox (SQLite and
PostgreSQL), stale alerts, and the tail sensor's helpers fed hostile ``slack-messages`` records.

A private broker with the real topics and the session Slack sandbox (``flow_settings`` /
``sandbox`` of tests/integration/conftest.py); each test has a ledger database of its own.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from alert_platform import topics
from alert_platform.delivery.deliverer import ChannelPacer
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.outbox import Outbox
from alert_platform.delivery.runner import (
    needs_delivery,
    ranges_already_delivered,
    run_delivery,
)
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from tests.integration.delivery_runner_helpers import (
    held,
    make_values,
    message_value,
    produce_values,
    responses,
)
from tests.integration.flow_helpers import read_topic
from tests.postgres import PG_URL, postgres_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def channels(sandbox: SandboxControl) -> list[str]:
    stem = uuid.uuid4().hex[:8].upper()
    ids = [f"C{stem}{i}" for i in range(2)]
    for i, channel_id in enumerate(ids):
        sandbox.add_channel(channel_id, f"rt-{stem.lower()}-{i}")
    return ids


@pytest.fixture
def run_settings(flow_settings: Settings, tmp_path: Path) -> Settings:
    return flow_settings.with_overrides(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}")


def fast() -> ChannelPacer:
    return ChannelPacer(rate=200.0, burst=50)


@pytest.fixture(params=["sqlite", "postgres"])
def outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    table = f"outbox_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        opened = Outbox(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", table_name=table)
        yield opened
        opened.close()
        return
    engine = postgres_engine()
    schema = f"outbox_test_{uuid.uuid4().hex[:12]}"
    opened = Outbox(PG_URL, schema=schema, table_name=table)
    yield opened
    opened.close()
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _age_rows(outbox: Outbox, ids: list[int], by: timedelta) -> None:
    t = outbox.table
    with outbox.engine.begin() as conn:
        conn.execute(t.update().where(t.c.id.in_(ids)).values(created_at=datetime.now(UTC) - by))


def test_outbox_add_pending_mark_sent_and_prune(outbox: Outbox) -> None:
    ids = [outbox.add({"alert_id": f"a-{i}", "response_id": f"r{i}", "ok": True}) for i in range(5)]
    assert len(set(ids)) == 5 and outbox.count(unsent=True) == 5
    now = datetime.now(UTC)
    assert outbox.pending(now - timedelta(minutes=1)) == []  # young rows: their run is alive
    _age_rows(outbox, ids[:3], timedelta(hours=2))
    stale = outbox.pending(now - timedelta(minutes=1))
    assert [row.id for row in stale] == ids[:3]
    assert [json.loads(row.value)["alert_id"] for row in stale] == ["a-0", "a-1", "a-2"]
    assert stale[0].key == "a-0" and stale[0].response_id == "r0"
    assert outbox.mark_sent(ids[:2]) == 2
    assert outbox.mark_sent(ids[:2]) == 0  # already sent
    assert [row.id for row in outbox.pending(now)] == ids[2:]
    assert outbox.count() == 5 and outbox.count(unsent=True) == 3
    # Prune in batches of 2: the three aged rows go (sent or not), the young two stay.
    assert outbox.prune(before=now - timedelta(hours=1), batch_size=2) == 3
    assert outbox.count() == 2
    assert outbox.prune(before=now - timedelta(hours=1), batch_size=2) == 0


def test_every_outcome_reaches_slack_responses_once_and_stale_alerts_wait_for_a_backfill(
    run_settings: Settings, sandbox: SandboxControl, channels: list[str]
) -> None:
    values = make_values(channels, per_channel=4)
    old = message_value(
        f"rt-old-{uuid.uuid4().hex[:6]}",
        channels[0],
        event_time=datetime.now(UTC) - timedelta(hours=run_settings.max_alert_age_hours + 48),
    )
    ranges = produce_values(run_settings, [*values, old])
    ids = [v["alert_id"] for v in values]
    client = make_web_client(run_settings)

    report = run_delivery(run_settings, client, ranges, pacer=fast())
    assert report.records_read == len(values) + 1
    assert held(sandbox, [*ids, old["alert_id"]]) == Counter(dict.fromkeys(ids, 1))
    assert report.stale == 1 and report.metadata()["stale"] == 1
    records = responses(run_settings, [*ids, old["alert_id"]])
    by_alert = {r["alert_id"]: r for r in records}
    assert len(records) == len(by_alert) == len(ids) + 1  # one record per outcome
    assert {by_alert[i]["outcome"] for i in ids} == {"ok"}
    assert by_alert[old["alert_id"]]["outcome"] == "stale"
    assert by_alert[old["alert_id"]]["ok"] is False
    assert all(len(r["response_id"]) == 32 for r in records)
    assert by_alert[ids[0]]["dedup_key"] == values[0]["dedup_key"]
    with Outbox(run_settings.effective_ledger_url) as outbox:
        assert outbox.count() == report.responses_written == len(records)
        assert outbox.count(unsent=True) == 0

    # An explicit backfill posts the stale alert, and nothing else again.
    again = run_delivery(run_settings, client, ranges, pacer=fast(), allow_stale=True)
    assert held(sandbox, [*ids, old["alert_id"]]) == Counter(
        {**dict.fromkeys(ids, 1), old["alert_id"]: 1}
    )
    assert again.delivery is not None and again.delivery.posted == 1
    last = [r for r in responses(run_settings, [old["alert_id"]]) if r["outcome"] == "ok"]
    assert len(last) == 1


def test_rows_a_dead_run_left_unsent_are_produced_by_the_next_run(
    run_settings: Settings, sandbox: SandboxControl
) -> None:
    alert_dead, alert_live = f"rt-dead-{uuid.uuid4().hex[:6]}", f"rt-live-{uuid.uuid4().hex[:6]}"
    with Outbox(run_settings.effective_ledger_url) as outbox:
        dead = outbox.add({"alert_id": alert_dead, "response_id": "d" * 32, "outcome": "ok"})
        live = outbox.add({"alert_id": alert_live, "response_id": "e" * 32, "outcome": "ok"})
        lease = timedelta(seconds=run_settings.delivery_lease_s)
        _age_rows(outbox, [dead], lease + timedelta(seconds=5))
        client = make_web_client(run_settings)
        report = run_delivery(run_settings, client, [], pacer=fast())
        assert report.responses_replayed == 1
        assert [r["response_id"] for r in responses(run_settings, [alert_dead])] == ["d" * 32]
        assert responses(run_settings, [alert_live]) == []  # its run may still be alive
        assert [row.id for row in outbox.pending(datetime.now(UTC))] == [live]
        # Marked sent: the next run does not produce it again.
        assert run_delivery(run_settings, client, [], pacer=fast()).responses_replayed == 0
        assert len(responses(run_settings, [alert_dead])) == 1


def _deep(levels: int) -> bytes:
    return (
        b'{"alert_id": "deep", "channel_id": "C1", "blocks": '
        + b"[" * levels
        + b"]" * levels
        + b"}"
    )


def test_tail_sensor_helpers_never_raise_on_hostile_records(
    run_settings: Settings, sandbox: SandboxControl, channels: list[str]
) -> None:
    normal = make_values(channels, per_channel=2)
    normal_range = produce_values(run_settings, normal, key=b"normal")
    client = make_web_client(run_settings)
    run_delivery(run_settings, client, normal_range, pacer=fast())
    tag = uuid.uuid4().hex[:6]
    hostile = {
        "deep-json": _deep(100_000),
        "deep-array": b"[" * 200_000,
        "not-json": b"\xff\xfe not json",
        "year-1": json.dumps(
            message_value(f"rt-y1-{tag}", channels[0], event_time=datetime(1, 1, 1, tzinfo=UTC))
        ).encode(),
        "year-9999": json.dumps(
            message_value(
                f"rt-y9999-{tag}", channels[0], event_time=datetime(9999, 12, 31, 23, tzinfo=UTC)
            )
        ).encode(),
    }
    hostile_ranges = {
        name: produce_values(run_settings, [raw], key=name.encode())
        for name, raw in hostile.items()
    }
    every = [*normal_range, *(r for rs in hostile_ranges.values() for r in rs)]
    assert ranges_already_delivered(run_settings, every) == set(normal_range)
    with DeliveryLedger(run_settings.effective_ledger_url) as ledger:
        for name, rs in hostile_ranges.items():
            assert all(needs_delivery(run_settings, r, ledger) for r in rs), name
        assert not needs_delivery(run_settings, normal_range[0], ledger)
        # A ledger that fails for the range: judged "needs delivery", not an exception.
        with ledger.engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {ledger.table.name} RENAME TO gone_{tag}"))
        assert needs_delivery(run_settings, normal_range[0], ledger)
    # No ledger database at all (a path that cannot be created): nothing counts as delivered.
    broken = run_settings.with_overrides(ledger_url="sqlite:////proc/nope/ledger.sqlite3")
    assert ranges_already_delivered(broken, normal_range) == set()


def test_a_run_over_hostile_records_dead_letters_them_and_delivers_the_rest(
    run_settings: Settings, sandbox: SandboxControl, channels: list[str]
) -> None:
    normal = make_values(channels, per_channel=2)
    bad = [_deep(100_000), b"\xff\xfe not json"]
    ranges = produce_values(run_settings, [bad[0], *normal, bad[1]], key=b"mixed")
    dlq_before = len(read_topic(run_settings, topics.SLACK_MESSAGES_DLQ))
    report = run_delivery(run_settings, make_web_client(run_settings), ranges, pacer=fast())
    ids = [v["alert_id"] for v in normal]
    assert held(sandbox, ids) == Counter(dict.fromkeys(ids, 1))
    assert report.dead_letters_written == len(bad)
    assert len(read_topic(run_settings, topics.SLACK_MESSAGES_DLQ)) - dlq_before == len(bad)
