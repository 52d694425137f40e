"""Retention of the platform's own state on SQLite and PostgreSQL: ledger rows (never
``sending`` ones), run-index rows and outbox rows past the de-duplication window plus the margin
are pruned in batches, written down in ``state_prunes``, while deliveries go on; the Dagster job
and its hourly schedule do it with the counts as materialization metadata."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance

from alert_platform.delivery.ledger import DELIVERED, SENDING, DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.delivery.outbox import Outbox
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.retention import (
    OUTBOX,
    RUN_INDEX,
    PruneLog,
    prune_state,
    retention_cutoff,
)
from alert_platform.run_index import PROCESSED_RANGES, RunIndex
from alert_platform.settings import Settings
from tests.integration.ops_state_helpers import (  # noqa: F401  (state_db_url: a fixture)
    state_db_url_fixture,
)

pytestmark = pytest.mark.integration

WINDOW = timedelta(hours=24)
LEASE = timedelta(seconds=60)


def settings_for(url: str, tmp_path: Path) -> Settings:
    """Window 24 h + margin 24 h: rows timed more than 48 h ago are past retention."""
    return Settings(data_dir=tmp_path, ledger_url=url).with_overrides(
        dedup_window_hours=24, state_retention_margin_hours=24.0
    )


def message(alert_id: str, event_time: datetime) -> OutboundMessage:
    return OutboundMessage(alert_id, "C1", "text", event_time, position="slack-messages:0:1")


def fill_ledger(
    ledger: DeliveryLedger, prefix: str, event_time: datetime, count: int, state: str
) -> None:
    """``count`` rows of ``state`` (delivered, failed_permanent or sending), 200 per commit."""
    for start in range(0, count, 200):
        with ledger.transaction() as conn:
            for n in range(start, min(count, start + 200)):
                claim = ledger.claim(message(f"{prefix}-{n}", event_time), WINDOW, conn=conn)
                if state == DELIVERED:
                    ledger.mark_delivered(claim, "C1", f"{n}.0001", attempts=1, conn=conn)
                elif state == "failed_permanent":
                    ledger.mark_failed(claim, "channel_not_found", attempts=1, conn=conn)


def states(ledger: DeliveryLedger) -> dict[str, int]:
    t = ledger.table
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state)).all()
    return {state: int(n) for state, n in rows}


def age_rows(url: str, table: sa.Table, column: str, ids: list[int], by: timedelta) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for row_id in ids:
            old = conn.execute(sa.select(table.c[column]).where(table.c.id == row_id)).scalar_one()
            conn.execute(table.update().where(table.c.id == row_id).values({column: old - by}))
    engine.dispose()


def test_prune_in_batches_keeps_sending_and_recent_rows(state_db_url: str, tmp_path: Path) -> None:
    settings = settings_for(state_db_url, tmp_path)
    now = datetime.now(UTC)
    old, recent = now - timedelta(hours=72), now - timedelta(hours=2)
    ledger = DeliveryLedger(state_db_url, lease=LEASE)
    fill_ledger(ledger, "old-delivered", old, 1_234, DELIVERED)
    fill_ledger(ledger, "old-failed", old, 5, "failed_permanent")
    fill_ledger(ledger, "old-sending", old, 4, SENDING)
    fill_ledger(ledger, "recent", recent, 10, DELIVERED)
    assert states(ledger) == {DELIVERED: 1_244, "failed_permanent": 5, SENDING: 4}

    index = RunIndex(state_db_url)
    for n in range(7):
        index.record("connector_failure", OffsetRange("notifications", 0, 10 * n, 10 * n + 10),
                     min_timestamp_ms=None, max_timestamp_ms=None, records=10, alerts=1,
                     run_id=f"run-{n}")  # fmt: skip
    ids = [r.id for r in _index_rows(index)]
    age_rows(state_db_url, PROCESSED_RANGES, "recorded_at", ids[:5], timedelta(hours=72))

    outbox = Outbox(state_db_url)
    outbox_ids = [outbox.add({"alert_id": f"a-{n}", "response_id": f"r-{n}"}) for n in range(3)]
    age_rows(state_db_url, outbox.table, "created_at", outbox_ids[:2], timedelta(hours=72))
    outbox.close()

    report = prune_state(settings, batch_size=500, ledger=ledger)
    assert report.ledger == 1_239  # 1,234 delivered + 5 failed; the 4 'sending' rows stay
    assert report.run_index == 5 and report.outbox == 2
    assert report.batches >= 3 + 1  # at least three ledger batches of <= 500, one run-index
    assert states(ledger) == {DELIVERED: 10, SENDING: 4}
    assert [r.run_id for r in _index_rows(index)] == ["run-5", "run-6"]
    assert abs(report.before - retention_cutoff(settings, now)) < timedelta(minutes=5)

    log = PruneLog(state_db_url)
    mark = log.last(ledger.table.fullname)
    assert mark is not None and mark.pruned_before == report.before
    assert (mark.rows_last, mark.rows_total) == (1_239, 1_239)
    assert log.last(RUN_INDEX).rows_total == 5 and log.last(OUTBOX).rows_total == 2

    again = prune_state(settings, batch_size=500, ledger=ledger)
    assert (again.ledger, again.run_index, again.outbox) == (0, 0, 0)
    mark = log.last(ledger.table.fullname)
    assert mark is not None and (mark.rows_last, mark.rows_total) == (0, 1_239)
    assert mark.pruned_before >= report.before
    log.close()
    index.close()
    ledger.close()


def _index_rows(index: RunIndex) -> list[sa.Row]:
    with index.engine.connect() as conn:
        return list(conn.execute(PROCESSED_RANGES.select().order_by(PROCESSED_RANGES.c.id)))


def test_prune_while_deliveries_claim(state_db_url: str, tmp_path: Path) -> None:
    """Claims and delivery records of new alerts go on while 3,000 old rows are pruned; none
    waits long (each prune batch is one short transaction)."""
    settings = settings_for(state_db_url, tmp_path)
    ledger = DeliveryLedger(state_db_url, lease=LEASE)
    fill_ledger(ledger, "old", datetime.now(UTC) - timedelta(hours=100), 3_000, DELIVERED)
    stop = threading.Event()
    waits: list[float] = []
    errors: list[BaseException] = []
    delivered: list[str] = []

    def deliver() -> None:
        worker = DeliveryLedger(state_db_url, lease=LEASE)
        n = 0
        try:
            while not stop.is_set() or n < 20:
                alert_id = f"live-{n}"
                started = time.monotonic()
                claim = worker.claim(message(alert_id, datetime.now(UTC)), WINDOW)
                assert claim.kind.value == "new"
                assert worker.mark_delivered(claim, "C1", f"{n}.1", attempts=1)
                waits.append(time.monotonic() - started)
                delivered.append(alert_id)
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            worker.close()

    thread = threading.Thread(target=deliver)
    thread.start()
    try:
        report = prune_state(settings, batch_size=250, ledger=ledger)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert errors == []
    assert report.ledger == 3_000 and report.batches >= 12
    assert states(ledger) == {DELIVERED: len(delivered)}
    assert len(delivered) >= 20
    # A batch of 250 deletes is a short transaction: generous bound for a loaded 2-core box.
    assert max(waits) < 10.0, f"a delivery waited {max(waits):.2f} s during the prune"
    ledger.close()


def test_retention_job_and_schedule(
    state_db_url: str,
    tmp_path: Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERT_LEDGER_URL", state_db_url)
    monkeypatch.setenv("ALERT_PLATFORM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ALERT_DEDUP_WINDOW_HOURS", "24")
    monkeypatch.setenv("ALERT_STATE_RETENTION_MARGIN_HOURS", "24")
    ledger = DeliveryLedger(state_db_url, lease=LEASE)
    fill_ledger(ledger, "old", datetime.now(UTC) - timedelta(hours=49), 42, DELIVERED)
    fill_ledger(ledger, "new", datetime.now(UTC) - timedelta(hours=47), 3, DELIVERED)

    from alert_platform.definitions import defs

    schedule = defs.resolve_schedule_def("state_retention_schedule")
    assert schedule.job_name == "state_retention_job"
    assert schedule.cron_schedule == "23 * * * *"
    result = defs.resolve_job_def("state_retention_job").execute_in_process(instance=instance)
    assert result.success
    event = instance.get_latest_materialization_event(AssetKey("platform_state_retention"))
    assert event is not None and event.asset_materialization is not None
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["ledger_rows_pruned"] == 42
    assert metadata["run_index_rows_pruned"] == 0
    assert states(ledger) == {DELIVERED: 3}
    ledger.close()
