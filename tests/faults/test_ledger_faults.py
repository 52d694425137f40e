"""Fault-table rows of the delivery ledger and deliverer, on the real local stack: records
produced to ``slack-messages`` on a real broker, read back, delivered to the Slack sandbox with
a real ledger (SQLite, and PostgreSQL for the clocks); counts measured from the sandbox.

* **poison records: ledger**: good alerts mixed with records no parser foresaw (deep nesting,
  huge numbers, non-UTF-8, dates out of range, bad dedup keys) and alerts whose ledger
  statement fails (a SQLite trigger, for those alerts only): every good alert is posted once,
  every bad one dead-lettered, in one batch and in its replay.
* **clocks: ledger**: event times of year 1 and 9999 and either side of the maximum alert
  age: the live batch posts the ones within the age (9999 included: bounding future times is
  enrichment's job) and records the rest ``stale``; an explicit backfill posts those once.
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
from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DELIVERED, STALE, DeliveryLedger
from alert_platform.delivery.messages import format_rfc3339
from alert_platform.kafka.clients import make_producer
from alert_platform.kafka.records import SourceRecord
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from tests.faults.results import record, tally
from tests.integration.flow_helpers import topic_records
from tests.postgres import PG_URL, postgres_engine

pytestmark = pytest.mark.integration

WINDOW = timedelta(hours=24)
MAX_AGE = timedelta(hours=24)
GOOD = 60


def fast_pacer() -> ChannelPacer:
    return ChannelPacer(rate=200.0, burst=50)


def posted(sandbox: SandboxControl) -> list[str]:
    """The dedup key of every message the sandbox holds (repeats included)."""
    keys = []
    for message in sandbox.messages():
        payload = message["metadata"]["event_payload"]
        keys.append(payload.get("dedup_key") or payload["alert_id"])
    return keys


def produce(settings: Settings, values: list[bytes | None], key: str) -> list[SourceRecord]:
    """Produce ``values`` (keyed ``key``) to slack-messages; read back exactly those."""
    producer = make_producer(settings)
    marker = f"{key}:{uuid.uuid4().hex[:6]}".encode()
    for value in values:
        producer.produce(topics.SLACK_MESSAGES, value=value, key=marker)
    assert producer.flush(30) == 0
    return [r for r in topic_records(settings, topics.SLACK_MESSAGES) if r.key == marker]


def alert(run: str, n: int, channel: str, event_time: datetime, **extra: object) -> dict:
    return {
        "alert_id": f"{run}-org-{n}-connector-failure",
        "dedup_key": f"ledger_faults:{run}:{n:04d}",
        "pipeline": "ledger_faults",
        "channel_id": channel,
        "text": f"alert {n}",
        "blocks": None,
        "source": {"topic": "connector-events", "partition": 0, "offset": n, "timestamp": None},
        "created_at": None,
        "event_time": format_rfc3339(event_time),
        **extra,
    }


def hostile(run: str, now: datetime, channel: str) -> list[bytes | None]:
    """Records no parser or ledger should choke on; none of them is an alert to post."""

    def variant(n: int, **fields: object) -> bytes:
        return json.dumps({**alert(run, n, channel, now), **fields}).encode()

    return [
        b"[" * 200_000 + b"]" * 200_000,
        variant(9000, text="x").replace(
            b'"text": "x"', b'"text": ' + b"[" * 60_000 + b"]" * 60_000
        ),
        b'{"alert_id": ' + b"7" * 20_000 + b"}",
        b'{"alert_id": "\xff\xfe\xfd", "text": "\xc0"}',
        variant(9001, event_time="0001-01-01T00:00:00+01:00"),
        variant(9002, event_time="9999-12-31T23:59:59-01:00"),
        variant(9003, dedup_key={"not": "a string"}),
        variant(9004, source={"topic": "t", "partition": 0, "offset": 2**70}),
        b'{"alert_id": "\\ud800", "channel_id": "C1", "text": "t", "event_time": "2025-01-01"}',
        b"null",
        None,
    ]


@pytest.fixture
def channels(sandbox: SandboxControl) -> list[str]:
    stem = uuid.uuid4().hex[:8].upper()
    ids = [f"C{stem}{i}" for i in range(4)]
    for i, channel_id in enumerate(ids):
        sandbox.add_channel(channel_id, f"lf-{stem.lower()}-{i}")
    return ids


@pytest.fixture
def pg_ledger() -> Iterator[DeliveryLedger]:
    engine = postgres_engine()
    schema = f"ledger_faults_{uuid.uuid4().hex[:10]}"
    ledger = DeliveryLedger(PG_URL, schema=schema, table_name="delivery_ledger")
    yield ledger
    ledger.close()
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def test_poison_records_in_the_ledger(
    flow_settings: Settings, sandbox: SandboxControl, channels: list[str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    now = datetime.now(UTC) - timedelta(minutes=5)
    good = [alert(run, n, channels[n % 4], now + timedelta(seconds=n)) for n in range(GOOD)]
    # Two orgs whose readable ids collide (acme-prod/env-1, acme/prod-env-1): two alerts.
    good[1]["alert_id"] = good[2]["alert_id"] = f"{run}-acme-prod-env-1-connector-failure"
    ledger_poisoned = [3, 17, 41]  # their claim statement fails (a trigger, those rows only)
    values: list[bytes | None] = []
    bad = hostile(run, now, channels[0])
    for n, value in enumerate(good):
        values.append(json.dumps(value).encode())
        if n % 6 == 0 and bad:
            values.append(bad.pop())
    values.extend(bad)
    records = produce(flow_settings, values, "poison")
    assert len(records) == len(values)

    ledger = DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    poison = " OR ".join(f"NEW.dedup_key = '{good[n]['dedup_key']}'" for n in ledger_poisoned)
    with ledger.transaction() as conn:
        conn.exec_driver_sql(
            f'CREATE TRIGGER poison BEFORE INSERT ON "{ledger.table.name}" WHEN {poison} '
            "BEGIN SELECT RAISE(ABORT, 'poisoned ledger statement'); END"
        )
    client = make_web_client(flow_settings, timeout=5)
    reports = [
        deliver_batch(records, client, ledger, window=WINDOW, pacer=fast_pacer(),
                      max_age=MAX_AGE)
        for _ in range(2)  # the batch, then its replay
    ]  # fmt: skip
    ledger.close()

    expected = [v["dedup_key"] for n, v in enumerate(good) if n not in ledger_poisoned]
    figures = tally(expected, posted(sandbox))
    dead = Counter(letter.error for letter in reports[0].dead_letters)
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert figures["delivered_once"] == GOOD - len(ledger_poisoned)
    assert dead == {"unparseable_message": len(hostile(run, now, channels[0])),
                    "delivery_error": len(ledger_poisoned)}  # fmt: skip
    assert reports[1].post_calls == 0 and reports[1].already_delivered == len(expected)
    record(
        "poison records: ledger",
        trials=len(reports),
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=reports[0].dead_lettered,
        notes=(
            f"{len(records)} records on slack-messages (real broker): {GOOD} good alerts (two "
            f"sharing one readable id), {dead['unparseable_message']} hostile records (deep "
            "nesting, huge numbers, non-UTF-8, dates out of range, bad dedup keys) and "
            f"{dead['delivery_error']} alerts whose ledger statement fails (SQLite trigger); "
            f"batch + replay: {reports[0].posted} posted, replay posted {reports[1].posted}"
        ),
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_clocks_in_the_ledger(
    flow_settings: Settings,
    sandbox: SandboxControl,
    channels: list[str],
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    run = uuid.uuid4().hex[:6]
    now = datetime.now(UTC)
    times = {
        "year-1": datetime(1, 1, 1, tzinfo=UTC),
        "year-9999": datetime(9999, 12, 31, 23, tzinfo=UTC),
        "max-datetime": datetime.max.replace(tzinfo=UTC),
        "inside-age": now - MAX_AGE + timedelta(minutes=10),
        "outside-age": now - MAX_AGE - timedelta(minutes=10),
        "now": now,
    }
    live_ok = {"year-9999", "max-datetime", "inside-age", "now"}
    values = [
        alert(run, n, channels[n % 4], t, text=name) for n, (name, t) in enumerate(times.items())
    ]
    records = produce(flow_settings, [json.dumps(v).encode() for v in values], "clocks")
    if backend == "sqlite":
        ledger = DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    else:
        ledger = request.getfixturevalue("pg_ledger")
    client = make_web_client(flow_settings, timeout=5)
    window = timedelta(hours=8760)  # the largest window the settings allow

    live = deliver_batch(records, client, ledger, window=window, pacer=fast_pacer(),
                         max_age=MAX_AGE)  # fmt: skip
    live_posted = Counter(m["text"] for m in sandbox.messages())
    assert live_posted == Counter(live_ok) and live.stale == len(times) - len(live_ok)
    states = {v["text"]: ledger.lookup(v["alert_id"])[0].state for v in values}
    assert states == {name: DELIVERED if name in live_ok else STALE for name in times}
    backfill = deliver_batch(records, client, ledger, window=window, pacer=fast_pacer(),
                             max_age=MAX_AGE, allow_stale=True)  # fmt: skip
    replay = deliver_batch(records, client, ledger, window=window, pacer=fast_pacer(),
                           max_age=MAX_AGE)  # fmt: skip
    if backend == "sqlite":
        ledger.close()
    figures = tally([v["dedup_key"] for v in values], posted(sandbox))
    assert figures["lost"] == figures["duplicated"] == figures["unexpected"] == 0
    assert backfill.delivered == len(times) - len(live_ok) and replay.post_calls == 0
    assert replay.already_delivered == len(times)
    dead = live.dead_lettered + backfill.dead_lettered + replay.dead_lettered
    assert dead == 0
    if backend == "postgres":
        return  # one row for the table: the SQLite run (same figures asserted on both)
    record(
        "clocks: ledger",
        trials=3,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=dead,
        notes=(
            "event times year 1, 9999-12-31T23, datetime.max, 24 h age -/+ 10 min, now; window "
            f"8760 h (SQLite and PostgreSQL): live posted {live.posted}, {live.stale} stale "
            f"(year 1, outside the age), explicit backfill posted {backfill.posted}, replay "
            f"posted {replay.posted}"
        ),
    )
