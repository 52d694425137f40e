"""The delivery ledger's hot statements, built once per table (constructing a statement and
its cache key costs more Python than running it on SQLite)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from alert_platform.delivery.ledger_schema import DELIVERED, FAILED_PERMANENT, SENDING
from alert_platform.storage import UTCDateTime


@dataclass(frozen=True)
class Statements:
    """The prepared statements of one ledger table (bind parameters ``p_*``)."""

    advisory: Any
    window: Any
    take_over: Any
    renew: Any
    insert: Any
    touch: Any
    delivered: Any
    failed: Any
    release_failed: Any
    release: Any


def build_statements(t: sa.Table) -> Statements:
    """The statements of ledger table ``t``."""

    def b(name: str, type_: Any) -> Any:
        return sa.bindparam(name, type_=type_)

    def keep_attempts() -> Any:
        return sa.func.coalesce(b("p_attempts", sa.Integer), t.c.attempts)

    owned = t.update().where(
        t.c.id == b("p_id", sa.Integer),
        t.c.state == SENDING,
        t.c.owner == b("p_claim_owner", sa.String),
    )
    advisory = sa.text("SELECT pg_advisory_xact_lock(hashtext(:p_key))")
    window = (
        sa.select(t)
        .where(
            t.c.dedup_key == b("p_key", sa.String),
            t.c.event_time >= b("p_lo", UTCDateTime),
            t.c.event_time <= b("p_hi", UTCDateTime),
        )
        .order_by(t.c.event_time)
    )
    take_over = (
        t.update()
        .where(t.c.id == b("p_id", sa.Integer))
        .values(
            owner=b("p_owner", sa.String),
            heartbeat_at=b("p_now", UTCDateTime),
            source=b("p_source", sa.String),
        )
    )
    renew = (
        t.update()
        .where(t.c.id == b("p_id", sa.Integer))
        .values(
            state=SENDING,
            channel=b("p_channel", sa.String),
            ts=None,
            source=b("p_source", sa.String),
            nonce=b("p_nonce", sa.String),
            owner=b("p_owner", sa.String),
            claimed_at=b("p_now", UTCDateTime),
            heartbeat_at=b("p_now", UTCDateTime),
            delivered_at=None,
        )
    )
    insert = t.insert()
    touch = owned.values(heartbeat_at=b("p_now", UTCDateTime), attempts=keep_attempts())
    delivered = (
        t.update()
        .where(t.c.id == b("p_id", sa.Integer), t.c.state == SENDING)
        .values(
            state=DELIVERED,
            channel=b("p_channel", sa.String),
            ts=b("p_ts", sa.String),
            delivered_at=b("p_now", UTCDateTime),
            error=None,
            attempts=keep_attempts(),
        )
    )
    failed = owned.values(
        state=FAILED_PERMANENT, error=b("p_error", sa.Text), owner=None,
        attempts=keep_attempts(),
    )  # fmt: skip
    release_failed = owned.values(
        state=b("p_state", sa.String), owner=None, error=b("p_error", sa.Text)
    )
    release = t.delete().where(
        t.c.id == b("p_id", sa.Integer),
        t.c.state == SENDING,
        t.c.owner == b("p_claim_owner", sa.String),
    )
    return Statements(
        advisory=advisory,
        window=window,
        take_over=take_over,
        renew=renew,
        insert=insert,
        touch=touch,
        delivered=delivered,
        failed=failed,
        release_failed=release_failed,
        release=release,
    )
