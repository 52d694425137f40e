"""The delivery ledger's claim semantics on real SQLite and real PostgreSQL.

PostgreSQL: ``ALERT_TEST_POSTGRES_URL`` (default ``postgresql+psycopg2://postgres@127.0.0.1:5432/
test``); each test module run gets its own schema, dropped afterwards. Skipped when unreachable.
"""

from __future__ import annotations

import json
import os
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
    SUPPRESSED_REPEAT,
    ClaimKind,
    DeliveryLedger,
)
from alert_platform.delivery.messages import OutboundMessage

pytestmark = pytest.mark.integration

PG_URL = os.environ.get(
    "ALERT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)
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
    engine = sa.create_engine(PG_URL)
    try:
        engine.connect().close()
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc.orig}")
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
