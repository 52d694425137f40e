"""The sandbox workspace's records: users, channels, messages, faults, the rate limiter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from alert_platform.delivery.pacing import TokenBuckets

TEAM_ID = "T0SANDBOX"
TEAM_NAME = "Alert Platform Sandbox"
BOT_USER_ID = "U0ALERTBOT"
BOT_ID = "B0ALERTBOT"
APP_ID = "A0ALERTBOT"
BOT_NAME = "alert-platform"

DEFAULT_CHANNELS: tuple[tuple[str, str], ...] = (
    ("C0UNROUTED", "alerts-unrouted"),
    ("C0OPS", "alerts-ops"),
)
DEFAULT_PER_SECOND = 1.0
DEFAULT_BURST = 3

FaultKind = Literal["500", "429", "hang"]
HangMode = Literal["respond", "close"]
FAULT_KINDS: tuple[str, ...] = ("500", "429", "hang")
HANG_MODES: tuple[str, ...] = ("respond", "close")


def ts_to_micros(ts: str) -> int:
    """``"1700000000.000100"`` -> microseconds since the epoch; ``ValueError`` if malformed."""
    seconds, _, fraction = ts.strip().partition(".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        raise ValueError(f"not a Slack ts: {ts!r}")
    return int(seconds) * 1_000_000 + int((fraction + "000000")[:6])


def micros_to_ts(micros: int) -> str:
    """Microseconds since the epoch -> Slack ``ts`` string with six decimals."""
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


@dataclass
class User:
    """A workspace member that can be looked up and messaged directly."""

    id: str
    email: str
    name: str

    def to_slack(self) -> dict[str, Any]:
        """The user object as ``users.list`` / ``users.lookupByEmail`` return it."""
        return {
            "id": self.id,
            "team_id": TEAM_ID,
            "name": self.name,
            "real_name": self.name,
            "deleted": False,
            "is_bot": False,
            "is_app_user": False,
            "profile": {
                "email": self.email,
                "real_name": self.name,
                "display_name": self.name,
            },
        }


@dataclass
class Channel:
    """A public channel (C...), a DM (D..., ``user`` set) or a group DM (G...)."""

    id: str
    name: str | None = None
    user: str | None = None
    members: tuple[str, ...] = ()

    @property
    def is_im(self) -> bool:
        return self.id.startswith("D")

    @property
    def is_mpim(self) -> bool:
        return self.id.startswith("G") and bool(self.members)

    @property
    def is_private(self) -> bool:
        """A named ``G...`` channel: a private channel (legacy group id)."""
        return self.id.startswith("G") and bool(self.name)

    @property
    def kind(self) -> str:
        """The ``conversations.list`` type: public_channel, private_channel, mpim or im."""
        if self.is_im:
            return "im"
        if self.is_mpim:
            return "mpim"
        return "private_channel" if self.is_private else "public_channel"

    def to_slack(self) -> dict[str, Any]:
        """The conversation object as ``conversations.list`` returns it (the bot is a member
        of every channel; nothing is archived in the sandbox)."""
        if self.is_im:
            return {
                "id": self.id,
                "created": 0,
                "is_im": True,
                "is_org_shared": False,
                "user": self.user,
                "is_user_deleted": False,
                "priority": 0,
            }
        name = self.name or "mpdm-" + "--".join(self.members) + "-1"
        return {
            "id": self.id,
            "name": name,
            "name_normalized": name,
            "is_channel": self.kind == "public_channel",
            "is_group": self.kind == "private_channel",
            "is_im": False,
            "is_mpim": self.is_mpim,
            "is_private": self.kind != "public_channel",
            "is_archived": False,
            "is_general": False,
            "is_shared": False,
            "is_org_shared": False,
            "is_member": True,
            "created": 0,
            "creator": BOT_USER_ID,
            "num_members": len(self.members) if self.members else 1,
        }


@dataclass
class Message:
    """One accepted message; ``micros`` is ``ts`` as an integer for range queries."""

    channel: str
    ts: str
    micros: int
    text: str
    blocks: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None
    thread_ts: str | None
    reply_broadcast: bool = False
    unfurl_links: bool | None = None
    unfurl_media: bool | None = None
    edited_ts: str | None = None
    replies: list[str] = field(default_factory=list)
    user: str = BOT_USER_ID

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def record(self) -> dict[str, Any]:
        """The shape ``GET /_sandbox/messages`` returns."""
        return {
            "channel": self.channel,
            "ts": self.ts,
            "text": self.text,
            "blocks": self.blocks,
            "metadata": self.metadata,
            "thread_ts": self.thread_ts,
            "user": self.user,
        }

    def to_slack(self) -> dict[str, Any]:
        """The message object as the Slack Web API returns it."""
        out: dict[str, Any] = {
            "type": "message",
            "user": self.user,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "text": self.text,
            "ts": self.ts,
        }
        if self.blocks is not None:
            out["blocks"] = self.blocks
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
            if self.is_reply:
                out["parent_user_id"] = BOT_USER_ID
        if self.replies:
            out["thread_ts"] = self.ts
            out["reply_count"] = len(self.replies)
            out["latest_reply"] = self.replies[-1]
        if self.edited_ts is not None:
            out["edited"] = {"user": BOT_USER_ID, "ts": self.edited_ts}
        return out


@dataclass
class Fault:
    """The next ``remaining`` calls to ``methods`` (``None``: any API method) fail as ``kind``."""

    kind: FaultKind
    remaining: int
    hang_seconds: float = 30.0
    hang_mode: HangMode = "respond"
    methods: frozenset[str] | None = None

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "remaining": self.remaining,
            "hang_seconds": self.hang_seconds,
            "hang_mode": self.hang_mode,
            "methods": sorted(self.methods) if self.methods is not None else None,
        }


class RateLimiter:
    """A token bucket per key (:class:`TokenBuckets`, the one the deliverer paces with):
    ``per_second`` refill, ``burst`` capacity; a falsy rate disables it."""

    def __init__(self, per_second: float | None, burst: int) -> None:
        self.configure(per_second, burst)

    def configure(self, per_second: float | None, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets = TokenBuckets(per_second, burst) if per_second else None

    def clear(self) -> None:
        if self._buckets is not None:
            self._buckets.clear()

    def acquire(self, key: str, now: float) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until one is available."""
        if self._buckets is None:
            return 0.0
        return self._buckets.try_take(key, now)
