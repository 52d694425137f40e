"""What makes delivery fast without weakening it: pacing settings, the ledger's bulk duplicate
read, claims inside a caller's transaction, and the deliverer's grouped ledger calls.

The ledger runs on a SQLite file in a tmp dir (no service needed)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from alert_platform.delivery import batch as delivery_batch
from alert_platform.delivery import lane, ledger_ops, runner
from alert_platform.delivery.deliverer import (
    DEFAULT_BURST,
    DEFAULT_MAX_WORKERS,
    DEFAULT_RATE,
    ChannelPacer,
    DeliveryReport,
)
from alert_platform.delivery.ledger import (
    ALREADY_DELIVERED,
    DELIVERED,
    SUPPRESSED_REPEAT,
    ClaimKind,
    DeliveryLedger,
)
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.local.profile import local_settings
from alert_platform.settings import ConfigError, Settings

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=24)


def msg(alert_id: str, event_time: datetime = T0) -> OutboundMessage:
    return OutboundMessage(alert_id, "C1", "text", event_time)


@pytest.fixture
def ledger(tmp_path: Path):
    with DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as opened:
        yield opened


# -- settings ---------------------------------------------------------------------------------


def test_pacing_defaults_are_slacks_and_the_deliverers() -> None:
    settings = Settings.from_env({})
    assert settings.slack_channel_rate_per_s == DEFAULT_RATE == 0.95
    assert settings.slack_channel_burst == DEFAULT_BURST == 2
    assert settings.delivery_max_workers == DEFAULT_MAX_WORKERS == 64


def test_pacing_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SLACK_CHANNEL_RATE_PER_S": "950",
            "SLACK_CHANNEL_BURST": "49",
            "ALERT_PLATFORM_DELIVERY_WORKERS": "128",
        }
    )
    assert (settings.slack_channel_rate_per_s, settings.slack_channel_burst) == (950.0, 49)
    assert settings.delivery_max_workers == 128


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLACK_CHANNEL_RATE_PER_S", "0"),
        ("SLACK_CHANNEL_RATE_PER_S", "-1"),
        ("SLACK_CHANNEL_RATE_PER_S", "fast"),
        ("SLACK_CHANNEL_RATE_PER_S", "nan"),
        ("SLACK_CHANNEL_RATE_PER_S", "inf"),
        ("SLACK_CHANNEL_BURST", "0"),
        ("SLACK_CHANNEL_BURST", "1.5"),
        ("ALERT_PLATFORM_DELIVERY_WORKERS", "0"),
    ],
)
def test_bad_pacing_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_run_delivery_paces_and_threads_as_the_settings_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    class Out:
        @classmethod
        def from_settings(cls, _settings: object) -> Out:
            return cls()

        def produce(self, *args: object) -> None:
            pass

        def flush(self) -> None:
            pass

    def fake_deliver(records: object, client: object, ledger: object, **options: Any):
        seen.update(options)
        return DeliveryReport()

    monkeypatch.setattr(runner, "read_messages", lambda settings, ranges: [])
    monkeypatch.setattr(runner, "BatchProducer", Out)
    monkeypatch.setattr(runner, "deliver_batch", fake_deliver)

    class Client:
        base_url = "http://127.0.0.1:1/api/"

    settings = Settings().with_overrides(
        slack_channel_rate_per_s=500.0, slack_channel_burst=20, delivery_max_workers=8
    )
    runner.run_delivery(settings, Client(), [], ledger=object())  # type: ignore[arg-type]
    pacer = seen["pacer"]
    assert (pacer.rate, pacer.burst, seen["max_workers"]) == (500.0, 20, 8)
    # One pacer per endpoint and pacing, shared by every run of the process.
    runner.run_delivery(settings, Client(), [], ledger=object())  # type: ignore[arg-type]
    assert seen["pacer"] is pacer
    # An explicit pacer wins.
    mine = ChannelPacer(3.0, 1)
    runner.run_delivery(settings, Client(), [], ledger=object(), pacer=mine)  # type: ignore[arg-type]
    assert seen["pacer"] is mine


# -- the ledger ----------------------------------------------------------------------------------


def test_duplicates_answers_what_claim_would(ledger: DeliveryLedger) -> None:
    done = ledger.claim(msg("a"), WINDOW)
    ledger.mark_delivered(done, "C1", "1.1", attempts=1)
    sending = ledger.claim(msg("b"), WINDOW)
    failed = ledger.claim(msg("c"), WINDOW)
    ledger.mark_failed(failed, "channel_not_found")
    batch = [
        msg("a"),  # the very same event: already delivered
        msg("a", T0 + timedelta(hours=3)),  # a repeat within the window: suppressed
        msg("a", T0 + WINDOW + timedelta(seconds=1)),  # outside the window: new
        msg("b"),  # in flight: not a duplicate
        msg("c"),  # failed for good: retried, not a duplicate
        msg("d"),  # unknown
    ]
    answers = ledger.duplicates(batch, WINDOW)
    kinds = [(a.kind, a.reason) if a else None for a in answers]
    assert kinds == [
        (ClaimKind.DUPLICATE, ALREADY_DELIVERED),
        (ClaimKind.DUPLICATE, SUPPRESSED_REPEAT),
        None,
        None,
        None,
        None,
    ]
    assert answers[0] is not None and answers[0].row.ts == "1.1"
    for message, answer in zip(batch, answers, strict=True):
        claim = ledger.claim(message, WINDOW, owner="checker")
        assert (claim.kind is ClaimKind.DUPLICATE) == (answer is not None), message
        if answer is not None:
            assert (claim.reason, claim.row.id) == (answer.reason, answer.row.id)
    assert sending.kind is ClaimKind.NEW


def test_duplicates_reads_in_chunks(ledger: DeliveryLedger, monkeypatch) -> None:
    from alert_platform.delivery import ledger_queries

    monkeypatch.setattr(ledger_queries, "IN_CHUNK", 3)
    messages = [msg(f"x{i}") for i in range(10)]
    for message in messages[::2]:
        ledger.mark_delivered(ledger.claim(message, WINDOW), "C1", "2.2")
    answers = ledger.duplicates(messages, WINDOW)
    assert [a is not None for a in answers] == [i % 2 == 0 for i in range(10)]


def test_claims_in_one_transaction_hold_together_or_not_at_all(ledger: DeliveryLedger) -> None:
    with ledger.transaction() as conn:
        first = ledger.claim(msg("t1"), WINDOW, conn=conn)
        second = ledger.claim(msg("t2"), WINDOW, conn=conn)
        again = ledger.claim(msg("t1"), WINDOW, conn=conn)  # sees the first one's row
    assert (first.kind, second.kind, again.kind) == (
        ClaimKind.NEW,
        ClaimKind.NEW,
        ClaimKind.IN_FLIGHT,
    )
    (row,) = ledger.lookup("t1")
    assert (row.id, row.nonce, row.claimed_at) == (first.row_id, first.nonce, first.claimed_at)
    assert row == first.row  # the claim's row is what the database holds
    with pytest.raises(RuntimeError, match="boom"), ledger.transaction() as conn:
        ledger.claim(msg("t3"), WINDOW, conn=conn)
        raise RuntimeError("boom")
    assert ledger.lookup("t3") == []  # rolled back: never claimed


def test_takeover_and_retry_rows_match_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    with (
        DeliveryLedger(url, owner="dead") as dead,
        DeliveryLedger(url, owner="alive", lease=timedelta(0)) as alive,
    ):
        stale = dead.claim(msg("u"), WINDOW)
        taken = alive.claim(msg("u"), WINDOW)
        assert taken.kind is ClaimKind.UNCERTAIN and taken.nonce == stale.nonce
        assert alive.lookup("u") == [taken.row]
        failed = alive.claim(msg("f"), WINDOW)
        alive.mark_failed(failed, "is_archived", attempts=1)
        retry = alive.claim(msg("f"), WINDOW)
        assert retry.retry_of_failure and alive.lookup("f") == [retry.row]


def test_attempts_are_kept_unless_given(ledger: DeliveryLedger) -> None:
    claim = ledger.claim(msg("n"), WINDOW)
    assert ledger.touch(claim, attempts=2)
    assert ledger.touch(claim)  # heartbeat only
    assert ledger.lookup("n")[0].attempts == 2
    assert ledger.mark_delivered(claim, "C1", "3.3")
    (row,) = ledger.lookup("n")
    assert (row.state, row.attempts) == (DELIVERED, 2)


# -- grouped ledger calls --------------------------------------------------------------------


class CountingLedger:
    """A SQLite ledger that counts its transactions."""

    def __init__(self, inner: DeliveryLedger) -> None:
        self.inner = inner
        self.single_writer = True
        self.transactions = 0

    def transaction(self):
        self.transactions += 1
        return self.inner.transaction()

    def savepoint(self, conn):
        return self.inner.savepoint(conn)


def test_grouped_calls_share_transactions_and_each_gets_its_answer(
    ledger: DeliveryLedger,
) -> None:
    counting = CountingLedger(ledger)
    ops = ledger_ops.LedgerOps(counting, on_error=lambda exc: None)  # type: ignore[arg-type]
    answers: dict[str, ClaimKind] = {}
    barrier = threading.Barrier(40)

    def claim(alert_id: str) -> None:
        barrier.wait()
        answers[alert_id] = ops.call(
            lambda conn: ledger.claim(msg(alert_id), WINDOW, conn=conn)
        ).kind

    threads = [threading.Thread(target=claim, args=(f"g{i}",)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ops.close()
    assert answers == {f"g{i}": ClaimKind.NEW for i in range(40)}
    assert counting.transactions < 40  # grouped
    assert ledger.count_by_state() == {"sending": 40}


def test_a_failing_call_fails_alone_and_only_a_systemic_one_stops_the_batch(
    ledger: DeliveryLedger,
) -> None:
    stopped: list[BaseException] = []
    ops = ledger_ops.LedgerOps(ledger, on_error=stopped.append)
    claims = [ops.call(lambda conn, a=a: ledger.claim(msg(a), WINDOW, conn=conn)) for a in "rs"]

    def broken(conn: object) -> None:
        raise RuntimeError("bad value for this one alert")

    # One group: a post recorded, a call that fails, another post recorded.
    with ops._cond:  # hold the ledger thread until the three calls are queued together
        ops._pending.append(
            ledger_ops.Op(
                lambda c: ledger.mark_delivered(claims[0], "C1", "4.4", conn=c), wait=False
            )
        )
        ops._pending.append(ledger_ops.Op(broken, wait=False))
        ops._pending.append(
            ledger_ops.Op(
                lambda c: ledger.mark_delivered(claims[1], "C1", "4.5", conn=c), wait=False
            )
        )
        ops._outstanding += 3
        ops._cond.notify_all()
    ops.flush()
    assert ops.error is None and stopped == []  # a per-alert failure does not stop the batch
    assert [ledger.lookup(a)[0].state for a in "rs"] == [DELIVERED, DELIVERED]
    with pytest.raises(RuntimeError, match="one alert"):
        ops.call(broken)  # raised to its own caller

    # A systemic failure (the database unusable) still stops the batch and is kept.
    def locked(conn: object) -> None:
        raise sa.exc.OperationalError("UPDATE ...", {}, Exception("database is locked"))

    ops.submit(locked)
    ops.flush()
    ops.close()
    assert isinstance(ops.error, sa.exc.OperationalError) and stopped == [ops.error]
    with pytest.raises(RuntimeError, match="after the batch ended"):
        ops.submit(lambda conn: None)


def test_postgres_style_ledgers_run_calls_in_place() -> None:
    class Concurrent:
        single_writer = False

    ops = ledger_ops.LedgerOps(Concurrent(), on_error=lambda exc: None)  # type: ignore[arg-type]
    assert ops.call(lambda conn: conn) is None  # no shared transaction handed in
    ops.submit(lambda conn: 1 / 0)  # one alert's failure: logged, the batch goes on
    assert ops.error is None
    with pytest.raises(sa.exc.OperationalError):  # systemic: raised at once
        ops.submit(lambda conn: (_ for _ in ()).throw(
            sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        ))  # fmt: skip
    with pytest.raises(ZeroDivisionError):
        ops.call(lambda conn: 1 / 0)  # a waited call raises to its caller
    ops.close()


def test_claim_ahead_only_when_pacing_is_fast(ledger: DeliveryLedger) -> None:
    def batch(rate: float, lease: timedelta) -> lane.Batch:
        from alert_platform.slack.client import make_web_client

        return lane.Batch(
            make_web_client(local_settings()),
            ledger,
            window=WINDOW,
            on_response=None,
            pacer=ChannelPacer(rate, 1),
            lease=lease,
            max_attempts=2,
            settle=1.0,
            owner=ledger.owner,
            after_post=None,
        )

    assert batch(DEFAULT_RATE, timedelta(seconds=60)).claim_ahead == 1  # Slack's pace
    assert batch(950.0, timedelta(seconds=60)).claim_ahead == delivery_batch.CLAIM_AHEAD
    assert batch(950.0, timedelta(0)).claim_ahead == 1
    assert batch(950.0, timedelta(seconds=60)).fresh_s == delivery_batch.FRESH_CLAIM_S
    assert batch(950.0, timedelta(seconds=15)).fresh_s == 1.0
    assert batch(950.0, timedelta(seconds=6)).fresh_s == pytest.approx(0.4)
