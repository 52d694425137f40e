"""The delivery ledger's reads: rows of an alert, counts, and the batch duplicate check.

:class:`LedgerQueries` is a base of :class:`~alert_platform.delivery.ledger.DeliveryLedger`;
it reads through the ledger's table, transactions and prepared statements.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alert_platform.delivery.ledger_model import (
    Claim,
    LedgerRow,
    as_window,
    duplicate_of,
    legacy_rows,
    window_bounds,
)
from alert_platform.delivery.ledger_schema import DELIVERED
from alert_platform.delivery.ledger_statements import Statements
from alert_platform.delivery.messages import OutboundMessage

LOG = logging.getLogger("alert_platform.delivery.ledger")
# Keys per ``IN (...)`` list of a bulk read (SQLite allows 32,766 parameters since 3.32).
IN_CHUNK = 500


class LedgerQueries:
    """Read-only ledger calls (no row written, no per-alert lock)."""

    table: sa.Table
    owner: str
    _q: Statements

    def _begin(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    # -- rows ------------------------------------------------------------------------------

    @staticmethod
    def _row(mapping: Any) -> LedgerRow:
        return LedgerRow(**{name: mapping[name] for name in LedgerRow.__dataclass_fields__})

    def lookup(self, alert_id: str) -> list[LedgerRow]:
        """Every row of ``alert_id``, newest event first (for ``explain``)."""
        t = self.table
        with self._begin() as conn:
            result = conn.execute(
                sa.select(t).where(t.c.alert_id == alert_id).order_by(t.c.event_time.desc())
            )
            return [self._row(m) for m in result.mappings()]

    def count_by_state(self) -> dict[str, int]:
        t = self.table
        with self._begin() as conn:
            result = conn.execute(sa.select(t.c.state, sa.func.count()).group_by(t.c.state))
            return {state: int(n) for state, n in result}

    # -- the window ------------------------------------------------------------------------

    def _within_window(
        self, conn: Connection, dedup_key: str, event_time: datetime, window: timedelta
    ) -> list[LedgerRow]:
        lo, hi = window_bounds(event_time, window)
        result = conn.execute(self._q.window, {"p_key": dedup_key, "p_lo": lo, "p_hi": hi})
        return [self._row(m) for m in result.mappings()]

    def is_delivered(self, message: OutboundMessage, window: timedelta | float) -> bool:
        """Whether a claim for ``message`` would be a ``DUPLICATE`` (read-only, no lock)."""
        event_time = message.event_time.astimezone(UTC)
        with self._begin() as conn:
            rows = self._within_window(conn, message.dedup_key, event_time, as_window(window))
        return any(row.state == DELIVERED for row in rows)

    def duplicates(
        self, messages: Sequence[OutboundMessage], window: timedelta | float
    ) -> list[Claim | None]:
        """For each message, the ``DUPLICATE`` claim :meth:`claim` would answer now (same row,
        same ``reason``), or ``None`` when it would answer anything else. One read per
        ``IN_CHUNK`` de-duplication keys, no row written: a ``delivered`` row is final, so the
        answer cannot change before the caller acts on it. A message whose answer cannot be
        computed gets ``None`` (its claim decides, or fails for it alone)."""
        window = as_window(window)
        t = self.table
        # Rows written before dedup keys existed carry dedup_key = alert_id ("legacy" rows):
        # they are read too, so an event delivered before the upgrade is not posted again.
        legacy = {m.alert_id for m in messages if m.dedup_key != m.alert_id}
        keys = sorted({message.dedup_key for message in messages} | legacy)
        delivered: dict[str, list[LedgerRow]] = defaultdict(list)
        for start in range(0, len(keys), IN_CHUNK):
            chunk = keys[start : start + IN_CHUNK]
            with self._begin() as conn:
                result = conn.execute(
                    sa.select(t).where(t.c.state == DELIVERED, t.c.dedup_key.in_(chunk))
                )
                for mapping in result.mappings():
                    row = self._row(mapping)
                    delivered[row.dedup_key].append(row)
        out: list[Claim | None] = []
        for message in messages:
            try:
                rows = delivered.get(message.dedup_key) or legacy_rows(message, delivered)
                out.append(duplicate_of(message, rows, window, self.owner))
            except Exception as exc:  # e.g. an event time no arithmetic can handle
                LOG.warning("alert %s: no duplicate check (%s: %s)", message.alert_id,
                            type(exc).__name__, exc)  # fmt: skip
                out.append(None)
        return out
