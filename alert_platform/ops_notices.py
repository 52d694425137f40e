"""Ops-channel notices: one Slack post per incident key, then a reminder at most once per
``reminder`` while the incident keeps being reported, never two posts for one event.

State lives in the ``ops_notices`` table of the ledger database (SQLite or PostgreSQL), one row
per key. :meth:`OpsNotifier.notify_many` decides, in one transaction that locks its keys (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock per key, in key order), whether to post, and
*claims* the post (state ``posting``) before calling Slack, like the delivery ledger claims an
alert: two processes reporting the same key at once make one post.

For the keys of one report:

* some key has a post in flight (a fresh ``posting`` claim) or was posted less than ``reminder``
  ago -> no post; the other keys are *covered* by that notice (their reminders follow it);
* every key has seen this very ``event`` already -> no post (a re-evaluated event);
* every key is new (or resolved, or its last post failed) -> the first post;
* otherwise -> a reminder (``still failing: N more report(s) since ...``).

The post goes through a client without retry handlers (a retried ``chat.postMessage`` after a
5xx or a timeout may post twice). Its outcome: posted -> ``posted``; certainly not posted (an
error answer below 500, a 429, a refused connection) -> the keys go back to what they were, so
the next report tries again; *uncertain* (5xx, timeout, reset) -> taken as posted (the next
post is the reminder): an incident may then be announced an interval late, never twice. A
Slack error is logged, never raised.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Connection

from alert_platform.slack.client import without_retries
from alert_platform.storage import StateTables, UTCDateTime

POSTING = "posting"
POSTED = "posted"
FAILED = "failed"  # the last post certainly posted nothing: the next report posts anew
RESOLVED = "resolved"

KEY_MAX = 255
TEXT_MAX = 3_000
# A 'posting' claim older than this belongs to a process that died during the Slack call:
# whether it posted is unknown, so it counts as a post made at its claim time.
CLAIM_LEASE = timedelta(minutes=2)

_LOGGER = logging.getLogger("alert_platform.ops_notices")
_METADATA = sa.MetaData()
OPS_NOTICES = sa.Table(
    "ops_notices",
    _METADATA,
    sa.Column("key", sa.String(KEY_MAX), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(64)),
    sa.Column("claimed_at", UTCDateTime),
    sa.Column("first_posted_at", UTCDateTime),
    sa.Column("last_posted_at", UTCDateTime),
    sa.Column("posts", sa.Integer, nullable=False, default=0),
    sa.Column("reports", sa.Integer, nullable=False, default=0),
    sa.Column("since_post", sa.Integer, nullable=False, default=0),
    sa.Column("last_reported_at", UTCDateTime),
    sa.Column("last_event", sa.String(KEY_MAX)),
    sa.Column("channel", sa.String(255)),
    sa.Column("ts", sa.String(64)),
    sa.Column("text", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("resolved_at", UTCDateTime),
)


def notice_key(key: str) -> str:
    """``key`` as stored: keys longer than the column keep a readable head and a hash."""
    if len(key) <= KEY_MAX:
        return key
    digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
    return f"{key[: KEY_MAX - 34]}~{digest}"


@dataclass(frozen=True)
class Notice:
    """One key's row (what tests and operators read)."""

    key: str
    state: str
    posts: int
    reports: int
    first_posted_at: datetime | None
    last_posted_at: datetime | None
    last_event: str | None
    ts: str | None
    error: str | None


@dataclass(frozen=True)
class _Decision:
    kind: str  # "first" | "reminder"
    previous: dict[str, dict[str, Any]]  # key -> the row's values before the claim (None: new)
    since_post: int
    since: datetime | None


class OpsNotifier(StateTables):
    """Posts ops notices to ``channel`` through ``client`` (its retry handlers are dropped);
    ``ledger_url`` holds the state; ``reminder`` is the least time between two posts of a key."""

    def __init__(
        self, client: WebClient, channel: str, ledger_url: str, reminder: timedelta
    ) -> None:
        super().__init__(ledger_url, _METADATA, "ops_notices.ddl")
        self.client = without_retries(client, logger=_LOGGER)
        self.channel = channel
        self.reminder = reminder
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"

    # -- the contract ------------------------------------------------------------------------

    def notify(self, key: str, text: str, *, event: str | None = None) -> bool:
        """Report ``key`` (``text`` is the message); ``True`` when this call posted."""
        return self.notify_many([key], text, event=event)

    def notify_many(self, keys: Sequence[str], text: str, *, event: str | None = None) -> bool:
        """Report one incident that touches ``keys`` (e.g. the ranges of one failed run); at
        most one post for all of them (module docstring). ``event`` identifies the report
        (e.g. a run id): the same event never posts twice. ``True`` when this call posted."""
        stored = sorted({notice_key(k) for k in keys})
        if not stored:
            raise ValueError("notify needs at least one key")
        event = None if event is None else event[:KEY_MAX]
        try:
            decision = self._claim(stored, event, text)
        except sa.exc.SQLAlchemyError:
            _LOGGER.exception("ops notice %s: state unavailable; not posting", stored[0])
            return False
        if decision is None:
            return False
        body = text
        if decision.kind == "reminder":
            when = _iso(decision.since) if decision.since else "the last message"
            body = (
                f":repeat: Reminder, still failing ({decision.since_post} more report(s) since "
                f"{when}): {text}"
            )
        posted, uncertain, ts, error = self._post(body[:TEXT_MAX])
        try:
            self._finish(stored, decision, posted or uncertain, ts, error)
        except sa.exc.SQLAlchemyError:
            _LOGGER.exception("ops notice %s: could not record the post", stored[0])
        return posted

    def resolve(self, key: str) -> bool:
        """The incident of ``key`` is over: its next report posts anew. ``True`` when it was
        open."""
        return self.resolve_many([key]) == 1

    def resolve_many(self, keys: Sequence[str]) -> int:
        """:meth:`resolve` for several keys in one transaction; how many were open."""
        stored = sorted({notice_key(k) for k in keys})
        if not stored:
            return 0
        t = OPS_NOTICES
        with self._begin_keys(stored) as conn:
            result = conn.execute(
                t.update()
                .where(t.c.key.in_(stored), t.c.state != RESOLVED)
                .values(state=RESOLVED, resolved_at=_utcnow(), owner=None)
            )
            return int(result.rowcount)

    def get(self, key: str) -> Notice | None:
        """The stored state of ``key``, if any."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(OPS_NOTICES.select().where(OPS_NOTICES.c.key == notice_key(key)))
                .mappings()
                .first()
            )
        if row is None:
            return None
        return Notice(
            key=row["key"], state=row["state"], posts=row["posts"], reports=row["reports"],
            first_posted_at=row["first_posted_at"], last_posted_at=row["last_posted_at"],
            last_event=row["last_event"], ts=row["ts"], error=row["error"],
        )  # fmt: skip

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _begin_keys(self, keys: Sequence[str]) -> Iterator[Connection]:
        """A write transaction holding ``keys`` (SQLite: the file's write lock)."""
        with self._begin() as conn:
            if self.engine.dialect.name == "postgresql":
                for key in sorted(keys):  # one order everywhere: no deadlock
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                        {"k": "ops_notices:" + key},
                    )
            yield conn

    def _claim(self, keys: list[str], event: str | None, text: str) -> _Decision | None:
        t = OPS_NOTICES
        now = _utcnow()
        with self._begin_keys(keys) as conn:
            rows = {
                r["key"]: dict(r)
                for r in conn.execute(t.select().where(t.c.key.in_(keys))).mappings()
            }
            for key in keys:
                if key not in rows:
                    conn.execute(t.insert().values(key=key, state=FAILED, posts=0, reports=0,
                                                   since_post=0))  # fmt: skip
            live = {k: r for k, r in rows.items() if r["state"] not in (RESOLVED, FAILED)}
            recent = [_posted_at(r) for r in live.values() if now - _posted_at(r) < self.reminder]
            repeat = event is not None and all(
                rows.get(k, {}).get("last_event") == event for k in keys
            )
            seen = t.update().where(t.c.key.in_(keys))
            report = {
                "reports": t.c.reports + 1,
                "since_post": t.c.since_post + 1,
                "last_reported_at": now,
                "last_event": event,
            }
            if repeat:
                return None
            if recent:  # covered by a notice posted (or being posted) a moment ago
                conn.execute(seen.values(**report))
                covered = max(recent)
                new = [k for k in keys if k not in live]
                if new:
                    conn.execute(
                        t.update()
                        .where(t.c.key.in_(new))
                        .values(state=POSTED, last_posted_at=covered, since_post=0,
                                resolved_at=None, text=text[:TEXT_MAX])
                    )  # fmt: skip
                return None
            kind = "reminder" if live else "first"
            since_post = max((r["since_post"] for r in live.values()), default=0) + 1
            since = max((_posted_at(r) for r in live.values()), default=None)
            conn.execute(
                seen.values(**report, state=POSTING, owner=self.owner, claimed_at=now,
                            resolved_at=None, text=text[:TEXT_MAX])
            )  # fmt: skip
            return _Decision(kind, rows, since_post, since)

    def _post(self, text: str) -> tuple[bool, bool, str | None, str | None]:
        """``(posted, uncertain, ts, error)`` of one ``chat.postMessage`` (never raises)."""
        try:
            response = self.client.chat_postMessage(
                channel=self.channel, text=text, unfurl_links=False, unfurl_media=False
            )
        except SlackApiError as exc:
            status = exc.response.status_code
            code = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            uncertain = status is None or status >= 500
            _LOGGER.error("ops notice to %s failed: HTTP %s %s", self.channel, status, code)
            return False, uncertain, None, f"HTTP {status} {code or ''}".strip()
        except Exception as exc:  # transport errors: refused means nothing was sent
            reason = getattr(exc, "reason", None)
            refused = isinstance(exc, ConnectionRefusedError) or isinstance(
                reason, ConnectionRefusedError
            )
            _LOGGER.error("ops notice to %s failed: %s: %s", self.channel, type(exc).__name__, exc)
            return False, not refused, None, f"{type(exc).__name__}: {exc}"[:2000]
        return True, False, response.get("ts"), None

    def _finish(
        self,
        keys: list[str],
        decision: _Decision,
        counted: bool,
        ts: str | None,
        error: str | None,
    ) -> None:
        t = OPS_NOTICES
        now = _utcnow()
        with self._begin_keys(keys) as conn:
            mine = t.update().where(t.c.key.in_(keys), t.c.owner == self.owner)
            if counted:  # posted, or perhaps posted: the next post is the reminder
                values: dict[str, Any] = {
                    "state": POSTED,
                    "last_posted_at": now,
                    "first_posted_at": sa.func.coalesce(t.c.first_posted_at, now),
                    "since_post": 0,
                    "owner": None,
                    "error": error,
                }
                if error is None:
                    values |= {"posts": t.c.posts + 1, "ts": ts, "channel": self.channel}
                conn.execute(mine.values(**values))
                return
            for key in keys:  # certainly not posted: back to what it was
                before = decision.previous.get(key)
                state = (
                    FAILED
                    if before is None or before["state"] in (RESOLVED, FAILED)
                    else (before["state"] if before["state"] != POSTING else POSTED)
                )
                conn.execute(
                    mine.where(t.c.key == key).values(state=state, owner=None, error=error)
                )


def _posted_at(row: dict[str, Any]) -> datetime:
    """When the row's notice was (or is being) posted; a dead claim counts as a post."""
    if row["state"] == POSTING:
        claimed = row["claimed_at"]
        if claimed is not None and _utcnow() - claimed < CLAIM_LEASE:
            return _utcnow()  # in flight right now
        return claimed or datetime.min.replace(tzinfo=UTC)
    return row["last_posted_at"] or datetime.min.replace(tzinfo=UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
