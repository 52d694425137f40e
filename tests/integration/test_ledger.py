"""The delivery ledger's claim semantics on real SQLite and real PostgreSQL.

PostgreSQL: ``ALERT_TEST_POSTGRES_URL`` (default ``postgresql+psycopg2://postgres@127.0.0.1:5432/
test``); each test module run gets its own schema, dropped afterwards. An unreachable server
fails the PostgreSQL tests (it runs on every machine here), it does not skip them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from alert_platform.delivery.ledger import (
    ALREADY_DELIVERED,
    DELIVERED,
    FAILED_PERMANENT,
    SENDING,
    STALE,
    SUPPRESSED_REPEAT,
    ClaimKind,
    DeliveryLedger,
    UTCDateTime,
)
from alert_platform.delivery.messages import OutboundMessage
from tests.postgres import PG_URL, postgres_engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class LedgerSpec:
    """Where a test's ledger lives; ``open()`` may be called from several processes."""

    url: str
    schema: str | None
    table: str

    def open(self, **kwargs: object) -> DeliveryLedger:
        return DeliveryLedger(self.url, schema=self.schema, table_name=self.table, **kwargs)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "schema": self.schema, "table": self.table})


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    engine = postgres_engine()
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    yield schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_spec(request: pytest.FixtureRequest, tmp_path: Path) -> LedgerSpec:
    table = f"ledger_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        return LedgerSpec(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", None, table)
    return LedgerSpec(PG_URL, request.getfixturevalue("pg_schema"), table)


@pytest.fixture
def ledger(ledger_spec: LedgerSpec) -> Iterator[DeliveryLedger]:
    with ledger_spec.open() as opened:
        yield opened


def msg(alert_id: str = "a-1", event_time: datetime = T0, channel: str = "C1") -> OutboundMessage:
    return OutboundMessage(alert_id, channel, "text", event_time, position="slack-messages:0:1")


def test_new_then_in_flight_then_delivered(ledger: DeliveryLedger) -> None:
    claim = ledger.claim(msg(), WINDOW)
    assert claim.kind is ClaimKind.NEW and claim.row.state == SENDING
    assert claim.row.event_time == T0 and claim.row.source == "slack-messages:0:1"
    assert claim.claimed_at.tzinfo is not None and len(claim.nonce) == 32

    again = ledger.claim(msg(), WINDOW)  # the first claim is live: hands off
    assert again.kind is ClaimKind.IN_FLIGHT and again.row_id == claim.row_id
    assert again.retry_at is not None and again.retry_at > datetime.now(UTC)

    assert ledger.touch(claim, attempts=1)
    assert ledger.mark_delivered(claim, "C1", "1700000000.000100", attempts=1)
    done = ledger.claim(msg(), WINDOW)
    assert done.kind is ClaimKind.DUPLICATE and done.reason == ALREADY_DELIVERED
    assert (done.row.channel, done.row.ts, done.row.attempts) == ("C1", "1700000000.000100", 1)

    (row,) = ledger.lookup("a-1")
    assert row.state == DELIVERED and row.delivered_at is not None and row.nonce == claim.nonce
    assert ledger.lookup("nope") == []


def test_window_is_on_event_time_both_ways(ledger: DeliveryLedger) -> None:
    first = ledger.claim(msg(), WINDOW)
    ledger.mark_delivered(first, "C1", "1.1")
    for delta in (timedelta(hours=3), -timedelta(hours=3), WINDOW, -WINDOW):
        repeat = ledger.claim(msg(event_time=T0 + delta), WINDOW)
        assert repeat.kind is ClaimKind.DUPLICATE and repeat.reason == SUPPRESSED_REPEAT, delta
    outside = ledger.claim(msg(event_time=T0 + WINDOW + timedelta(microseconds=1)), WINDOW)
    assert outside.kind is ClaimKind.NEW
    # Hours as a number, like settings.dedup_window_hours; other alert ids are independent.
    assert ledger.claim(msg(event_time=T0 + timedelta(hours=2)), 1).kind is ClaimKind.NEW
    assert ledger.claim(msg("a-2"), WINDOW).kind is ClaimKind.NEW
    assert len(ledger.lookup("a-1")) == 3


def test_stale_sending_row_is_uncertain_and_taken_over(ledger_spec: LedgerSpec) -> None:
    crashed = ledger_spec.open(owner="crashed-run")
    claim = crashed.claim(msg(), WINDOW)
    crashed.touch(claim, attempts=1)

    rerun = ledger_spec.open(owner="re-run", lease=timedelta(0))
    uncertain = rerun.claim(msg(), WINDOW)
    assert uncertain.kind is ClaimKind.UNCERTAIN
    assert uncertain.nonce == claim.nonce and uncertain.claimed_at == claim.claimed_at
    assert uncertain.row.owner == "re-run" and uncertain.attempts == 1
    # The crashed owner is fenced off: no heartbeat, no release.
    assert not crashed.touch(claim) and not crashed.release(claim)
    assert rerun.touch(uncertain)
    assert rerun.mark_delivered(uncertain, "C1", "2.2")
    assert rerun.claim(msg(), WINDOW).reason == ALREADY_DELIVERED
    crashed.close()
    rerun.close()


def test_release_makes_it_new_again(ledger: DeliveryLedger) -> None:
    claim = ledger.claim(msg(), WINDOW)
    assert ledger.release(claim)
    assert ledger.lookup("a-1") == []
    assert not ledger.release(claim)
    again = ledger.claim(msg(), WINDOW)
    assert again.kind is ClaimKind.NEW and again.nonce != claim.nonce


def test_permanent_failure_can_be_retried_by_a_replay(ledger: DeliveryLedger) -> None:
    claim = ledger.claim(msg(), WINDOW)
    assert ledger.mark_failed(claim, "channel_not_found", attempts=1)
    (row,) = ledger.lookup("a-1")
    assert (row.state, row.error, row.attempts) == (FAILED_PERMANENT, "channel_not_found", 1)
    # A failed row suppresses nothing: another event of the alert is simply new ...
    other = ledger.claim(msg(event_time=T0 + timedelta(hours=1)), WINDOW)
    assert other.kind is ClaimKind.NEW and not other.retry_of_failure
    ledger.release(other)
    # ... and the very same event is claimed again on the same row (a replay retries it).
    retry = ledger.claim(msg(), WINDOW)
    assert retry.kind is ClaimKind.NEW and retry.retry_of_failure
    assert retry.row_id == claim.row_id and retry.nonce != claim.nonce and retry.attempts == 1
    # Releasing the retry restores the failure record.
    assert ledger.release(retry)
    (row,) = ledger.lookup("a-1")
    assert (row.state, row.error) == (FAILED_PERMANENT, "channel_not_found")
    retry = ledger.claim(msg(), WINDOW)
    assert ledger.mark_delivered(retry, "C1", "3.3", attempts=2)
    assert ledger.claim(msg(), WINDOW).reason == ALREADY_DELIVERED


def test_table_is_created_once_and_shared(ledger_spec: LedgerSpec) -> None:
    first = ledger_spec.open()
    claim = first.claim(msg(), WINDOW)
    second = ledger_spec.open()  # table exists: reused, not recreated
    assert second.lookup("a-1")[0].nonce == claim.nonce
    assert second.count_by_state() == {SENDING: 1}
    assert "password" not in repr(first)
    first.close()
    second.close()


def test_sqlite_uses_wal_and_busy_timeout(tmp_path: Path) -> None:
    ledger = DeliveryLedger(f"sqlite:///{tmp_path / 'sub' / 'ledger.sqlite3'}")
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    ledger.close()


def test_concurrent_claimers_in_threads(ledger_spec: LedgerSpec) -> None:
    ledgers = [ledger_spec.open(owner=f"worker-{i}") for i in range(6)]
    alert_ids = [f"race-{i}" for i in range(25)]
    kinds: Counter[tuple[str, ClaimKind]] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(len(ledgers))

    def work(ledger: DeliveryLedger) -> None:
        barrier.wait()
        for alert_id in alert_ids:
            claim = ledger.claim(msg(alert_id), WINDOW)
            with lock:
                kinds[(alert_id, claim.kind)] += 1

    threads = [threading.Thread(target=work, args=(led,)) for led in ledgers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for alert_id in alert_ids:
        assert kinds[(alert_id, ClaimKind.NEW)] == 1, alert_id
        assert kinds[(alert_id, ClaimKind.IN_FLIGHT)] == len(ledgers) - 1, alert_id
    for led in ledgers:
        led.close()


_CLAIMER = r"""
import json, sys
from datetime import UTC, datetime, timedelta
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
spec = json.loads(sys.argv[1])
ledger = DeliveryLedger(spec["url"], schema=spec["schema"], table_name=spec["table"],
                        owner=sys.argv[2])
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()  # the start signal: both processes race from here
t0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
out = {}
for i in range(int(sys.argv[3])):
    claim = ledger.claim(OutboundMessage(f"proc-{i}", "C1", "t", t0), timedelta(hours=24))
    out[claim.alert_id] = claim.kind.value
print(json.dumps(out))
"""


def test_two_processes_claim_the_same_alerts(ledger_spec: LedgerSpec) -> None:
    ledger_spec.open().close()  # create the table up front
    n = 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, ledger_spec.to_json(), f"proc-owner-{i}", str(n)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    outputs = [proc.communicate("go\n", timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    for i in range(n):
        kinds = sorted(result[f"proc-{i}"] for result in results)
        assert kinds == ["in_flight", "new"], (i, kinds)
    with ledger_spec.open() as check:
        assert check.count_by_state() == {SENDING: n}


# -- collision-free identity, the ends of the datetime range, stale rows --------------------


def keyed(alert_id: str, dedup_key: str, event_time: datetime = T0) -> OutboundMessage:
    return OutboundMessage(alert_id, "C1", "text", event_time, dedup_key=dedup_key)


def test_same_readable_id_with_different_dedup_keys_are_two_alerts(
    ledger: DeliveryLedger,
) -> None:
    # acme-prod/env-1 and acme/prod-env-1 render the same readable id; their keys differ.
    readable = "acme-prod-env-1-c1-connector-failure"
    first, second = keyed(readable, "connector_failure:aa"), keyed(readable, "connector_failure:bb")
    claims = [ledger.claim(m, WINDOW) for m in (first, second)]
    assert [c.kind for c in claims] == [ClaimKind.NEW, ClaimKind.NEW]
    assert {c.row.dedup_key for c in claims} == {"connector_failure:aa", "connector_failure:bb"}
    assert ledger.mark_delivered(claims[0], "C1", "1.1")
    found = ledger.duplicates([first, second], WINDOW)
    assert found[0] is not None and found[0].reason == ALREADY_DELIVERED and found[1] is None
    assert ledger.claim(second, WINDOW).kind is ClaimKind.IN_FLIGHT  # its own live claim
    assert len(ledger.lookup(readable)) == 2  # explain finds both by the readable id
    # Without a dedup key the alert id is the key (messages of earlier versions).
    assert OutboundMessage("plain", "C1", "t", T0).dedup_key == "plain"


@pytest.mark.parametrize(
    "event_time",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ],
    ids=["year-1", "year-9999", "datetime-max"],
)
def test_event_times_at_the_ends_of_the_range(
    ledger_spec: LedgerSpec, event_time: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PostgreSQL session in a zone west of UTC would read year 1 back as year 0 (out of
    # range for Python): the ledger's sessions run in UTC whatever the client's zone.
    monkeypatch.setenv("PGTZ", "America/Los_Angeles")
    window = timedelta(hours=8760)  # the largest de-duplication window the settings allow
    with ledger_spec.open() as ledger:
        message = msg("edge", event_time)
        assert ledger.duplicates([message], window) == [None]
        assert not ledger.is_delivered(message, window)
        claim = ledger.claim(message, window)
        assert claim.kind is ClaimKind.NEW and claim.row.event_time == event_time
        assert ledger.mark_delivered(claim, "C1", "1.1")
        assert ledger.is_delivered(message, window)
        (known,) = ledger.duplicates([message], window)
        assert known is not None and known.reason == ALREADY_DELIVERED
        assert ledger.claim(message, window).reason == ALREADY_DELIVERED
        (row,) = ledger.lookup("edge")
        assert row.event_time == event_time and row.state == DELIVERED


def test_stale_rows_never_suppress_and_a_backfill_delivers_them(ledger: DeliveryLedger) -> None:
    old = msg("old")
    assert ledger.mark_stale(old)
    assert ledger.mark_stale(old)  # again (a re-run): still one row
    (row,) = ledger.lookup("old")
    assert (row.state, row.error, row.dedup_key) == (STALE, "stale", "old")
    assert ledger.duplicates([old], WINDOW) == [None]
    # Another event of the alert is new, not suppressed by the stale one.
    other = ledger.claim(msg("old", T0 + timedelta(hours=1)), WINDOW)
    assert other.kind is ClaimKind.NEW and not other.retry_of_failure
    assert ledger.release(other)
    # An explicit backfill claims the stale event on its row; a release puts it back.
    retry = ledger.claim(old, WINDOW)
    assert retry.kind is ClaimKind.NEW and retry.retry_of_failure and retry.prior_state == STALE
    assert retry.row_id == row.id
    assert ledger.release(retry)
    assert [r.state for r in ledger.lookup("old")] == [STALE]
    retry = ledger.claim(old, WINDOW)
    assert ledger.mark_delivered(retry, "C1", "5.5", attempts=1)
    assert [r.state for r in ledger.lookup("old")] == [DELIVERED]
    # Once delivered, a live run's stale verdict changes nothing.
    assert not ledger.mark_stale(old)
    assert [r.state for r in ledger.lookup("old")] == [DELIVERED]
    # A permanent failure of the same event becomes stale (one row, never two).
    failed = ledger.claim(msg("failed"), WINDOW)
    ledger.mark_failed(failed, "channel_not_found")
    assert ledger.mark_stale(msg("failed"))
    assert [r.state for r in ledger.lookup("failed")] == [STALE]


def test_a_failing_statement_in_a_savepoint_voids_nothing_else(ledger: DeliveryLedger) -> None:
    claims = []
    with ledger.transaction() as conn:
        with ledger.savepoint(conn) as point:
            claims.append(ledger.claim(msg("before"), WINDOW, conn=point))
        with pytest.raises(sa.exc.IntegrityError), ledger.savepoint(conn) as point:
            ledger.claim(msg("poison"), WINDOW, conn=point)  # fine so far ...
            assert point is not None
            point.execute(ledger.table.update().values(state="bogus"))  # ... CHECK fails
        with ledger.savepoint(conn) as point:
            claims.append(ledger.claim(msg("after"), WINDOW, conn=point))
    assert [c.kind for c in claims] == [ClaimKind.NEW, ClaimKind.NEW]
    assert ledger.lookup("poison") == []  # rolled back with its savepoint, alone
    assert [r.state for a in ("before", "after") for r in ledger.lookup(a)] == [SENDING] * 2


# -- upgrading a table of the previous version ------------------------------------------------


def previous_version_table(metadata: sa.MetaData, table_name: str) -> sa.Table:
    """The table as the previous version created it (``git show 38cc084:...ledger.py``)."""
    return sa.Table(
        table_name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.String(512), nullable=False),
        sa.Column("event_time", UTCDateTime, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(255)),
        sa.Column("ts", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("source", sa.String(512)),
        sa.Column("nonce", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(128)),
        sa.Column("claimed_at", UTCDateTime, nullable=False),
        sa.Column("heartbeat_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime),
        sa.Column("error", sa.Text),
        sa.UniqueConstraint("alert_id", "event_time", name=f"uq_{table_name}_alert_event"),
        sa.CheckConstraint(
            "state IN ('sending', 'delivered', 'failed_permanent')",
            name=f"ck_{table_name}_state",
        ),
    )


def test_a_table_of_the_previous_version_is_upgraded(
    ledger_spec: LedgerSpec, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(ledger_spec.url)
    metadata = sa.MetaData(schema=ledger_spec.schema)
    old = previous_version_table(metadata, ledger_spec.table)
    with engine.begin() as conn:
        if ledger_spec.schema:
            conn.execute(sa.schema.CreateSchema(ledger_spec.schema, if_not_exists=True))
        old.create(conn)
        base = {"channel": "C1", "attempts": 1, "owner": None, "claimed_at": T0,
                "heartbeat_at": T0, "event_time": T0, "ts": None, "delivered_at": None,
                "error": None}  # fmt: skip
        conn.execute(old.insert(), [
            {**base, "alert_id": "was-delivered", "state": DELIVERED, "nonce": "n1", "ts": "1.1",
             "delivered_at": T0},
            {**base, "alert_id": "was-failed", "state": FAILED_PERMANENT, "nonce": "n2",
             "error": "channel_not_found"},
        ])  # fmt: skip
    engine.dispose()

    with caplog.at_level("WARNING", logger="alert_platform.delivery.ledger"):
        ledger = ledger_spec.open()
    assert "upgraded the delivery ledger table" in caplog.text
    # Old rows keep their meaning, keyed on dedup_key = alert_id.
    (delivered,) = ledger.lookup("was-delivered")
    assert (delivered.dedup_key, delivered.state, delivered.ts) == (
        "was-delivered",
        DELIVERED,
        "1.1",
    )
    assert ledger.claim(msg("was-delivered"), WINDOW).reason == ALREADY_DELIVERED
    # The same event re-derived by the new version (a pipeline dedup key) is still known; a
    # repeat of the readable id at another time is not suppressed by the ambiguous old row.
    (replayed,) = ledger.duplicates([keyed("was-delivered", "p:new")], WINDOW)
    assert replayed is not None and replayed.reason == ALREADY_DELIVERED
    later = keyed("was-delivered", "p:new", T0 + timedelta(minutes=5))
    assert ledger.duplicates([later], WINDOW) == [None]
    retry = ledger.claim(msg("was-failed"), WINDOW)
    assert retry.kind is ClaimKind.NEW and retry.retry_of_failure
    # The new state is allowed, nonsense still is not.
    assert ledger.mark_stale(msg("now-stale"))
    assert ledger.lookup("now-stale")[0].state == STALE
    with pytest.raises(sa.exc.IntegrityError), ledger.transaction() as conn:
        conn.execute(ledger.table.update().values(state="bogus"))
    # The unique constraint is on (dedup_key, event_time) now: one readable id, two alerts.
    twins = [keyed("twin", "p:1"), keyed("twin", "p:2")]
    assert [ledger.claim(m, WINDOW).kind for m in twins] == [ClaimKind.NEW, ClaimKind.NEW]
    ledger.close()
    # Opening it again changes nothing more.
    caplog.clear()
    with caplog.at_level("WARNING", logger="alert_platform.delivery.ledger"):
        again = ledger_spec.open()
    assert "upgraded" not in caplog.text
    assert again.count_by_state() == {DELIVERED: 1, SENDING: 3, STALE: 1}
    again.close()
