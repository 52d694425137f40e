"""In-memory state of the Slack sandbox: directory, messages, rate limiter, faults and stats.

Everything here is guarded by one lock (``SandboxState.lock``); the critical sections are a few
dictionary operations, so the server stays fast under concurrent load. The records themselves
are in :mod:`alert_platform.local.sandbox.models`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from alert_platform.local.sandbox.models import (
    APP_ID,
    BOT_ID,
    BOT_NAME,
    BOT_USER_ID,
    DEFAULT_BURST,
    DEFAULT_CHANNELS,
    DEFAULT_PER_SECOND,
    FAULT_KINDS,
    HANG_MODES,
    TEAM_ID,
    TEAM_NAME,
    Channel,
    Fault,
    FaultKind,
    HangMode,
    Message,
    RateLimiter,
    User,
    micros_to_ts,
    ts_to_micros,
)

__all__ = [
    "APP_ID",
    "BOT_ID",
    "BOT_NAME",
    "BOT_USER_ID",
    "DEFAULT_BURST",
    "DEFAULT_CHANNELS",
    "DEFAULT_PER_SECOND",
    "FAULT_KINDS",
    "HANG_MODES",
    "TEAM_ID",
    "TEAM_NAME",
    "Channel",
    "Fault",
    "FaultKind",
    "HangMode",
    "Message",
    "RateLimiter",
    "SandboxState",
    "User",
    "micros_to_ts",
    "ts_to_micros",
]


class SandboxState:
    """Directory, messages, faults, rate limiting and counters of one sandbox instance."""

    def __init__(
        self,
        token: str,
        *,
        per_second: float | None = DEFAULT_PER_SECOND,
        burst: int = DEFAULT_BURST,
    ) -> None:
        self.token = token
        self.revoked = False
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.users: dict[str, User] = {}
        self.users_by_email: dict[str, User] = {}
        self.channels: dict[str, Channel] = {}
        self.channels_by_name: dict[str, Channel] = {}
        self.messages: list[Message] = []
        self.by_channel: dict[str, list[Message]] = {}
        self.by_key: dict[tuple[str, str], Message] = {}
        self.faults: deque[Fault] = deque()
        self.limiter = RateLimiter(per_second, burst)
        self.stats: Counter[str] = Counter()
        self.calls_by_method: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.faults_by_kind: Counter[str] = Counter()
        self._last_micros = 0
        for channel_id, name in DEFAULT_CHANNELS:
            self.add_channel(channel_id, name)

    # -- directory -------------------------------------------------------------------------

    def add_user(self, user_id: str, email: str, name: str) -> User:
        """Add or replace a user (id ``U...``/``W...``)."""
        if not user_id or user_id[0] not in "UW":
            raise ValueError(f"user id must start with U or W, got {user_id!r}")
        if not email or "@" not in email:
            raise ValueError(f"user {user_id} needs an email address, got {email!r}")
        user = User(user_id, email, name or user_id)
        with self.lock:
            old = self.users.get(user_id)
            if old is not None:
                self.users_by_email.pop(old.email.lower(), None)
            self.users[user_id] = user
            self.users_by_email[email.lower()] = user
        return user

    def add_channel(self, channel_id: str, name: str) -> Channel:
        """Add or rename a channel (id ``C...``/``G...``); ``name`` may start with ``#``."""
        if not channel_id or channel_id[0] not in "CG":
            raise ValueError(f"channel id must start with C or G, got {channel_id!r}")
        name = name.lstrip("#").strip()
        if not name:
            raise ValueError(f"channel {channel_id} needs a name")
        channel = Channel(channel_id, name)
        with self.lock:
            old = self.channels.get(channel_id)
            if old is not None and old.name:
                self.channels_by_name.pop(old.name, None)
            self.channels[channel_id] = channel
            self.channels_by_name[name] = channel
        return channel

    def load_seed(self, path: str | Path) -> None:
        """Load ``{"users": [{id, email, name}], "channels": [{id, name}]}``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"seed file {path} must hold a JSON object")
        for user in data.get("users", []):
            self.add_user(str(user["id"]), str(user["email"]), str(user.get("name", "")))
        for channel in data.get("channels", []):
            self.add_channel(str(channel["id"]), str(channel["name"]))

    def open_dm(self, user_id: str) -> tuple[Channel | None, bool]:
        """``(the DM channel with a known user, whether this call created it)``;
        ``(None, False)`` if the user is unknown."""
        with self.lock:
            if user_id not in self.users:
                return None, False
            channel_id = "D" + user_id[1:]
            channel = self.channels.get(channel_id)
            if channel is not None:
                return channel, False
            channel = self.channels[channel_id] = Channel(channel_id, user=user_id)
            return channel, True

    def open_mpim(self, user_ids: list[str]) -> tuple[Channel | None, bool]:
        """``(a group DM with several known users, whether this call created it)``;
        ``(None, False)`` if any is unknown."""
        with self.lock:
            if any(u not in self.users for u in user_ids):
                return None, False
            members = tuple(sorted(set(user_ids)))
            digest = hashlib.sha1(",".join(members).encode()).hexdigest()[:9].upper()
            channel_id = "G" + digest
            channel = self.channels.get(channel_id)
            if channel is not None:
                return channel, False
            channel = self.channels[channel_id] = Channel(channel_id, members=members)
            return channel, True

    def find_channel(
        self, ref: str, *, allow_user: bool, allow_name: bool = True
    ) -> Channel | None:
        """Resolve a channel id, (``allow_name``) a ``#name``/``name`` or (``allow_user``) a
        user id to a channel.

        As in Slack: ``chat.postMessage`` takes all three; the methods that read or change a
        conversation (``conversations.history``/``.replies``, ``chat.update``) take only its
        id and answer ``channel_not_found`` for a name or a user id.
        """
        ref = ref.strip()
        if not ref:
            return None
        if ref.startswith("#"):
            return self.channels_by_name.get(ref[1:]) if allow_name else None
        channel = self.channels.get(ref)
        if channel is not None:
            return channel
        if allow_user and ref[0] in "UW" and ref in self.users:
            return self.open_dm(ref)[0]
        return self.channels_by_name.get(ref) if allow_name else None

    def conversations(self, types: frozenset[str]) -> list[Channel]:
        """Conversations of the given ``conversations.list`` types, ordered by id."""
        with self.lock:
            found = [c for c in self.channels.values() if c.kind in types]
        return sorted(found, key=lambda c: c.id)

    def channel_label(self, channel_id: str) -> str:
        """Human label: ``#name``, ``DM with Name`` or the bare id."""
        channel = self.channels.get(channel_id)
        if channel is None:
            return channel_id
        if channel.name:
            return f"#{channel.name}"
        if channel.user:
            user = self.users.get(channel.user)
            return f"DM with {user.name} ({user.email})" if user else f"DM with {channel.user}"
        if channel.members:
            names = [self.users[m].name if m in self.users else m for m in channel.members]
            return "Group DM: " + ", ".join(names)
        return channel_id

    # -- messages --------------------------------------------------------------------------

    def _next_micros(self) -> int:
        micros = max(time.time_ns() // 1000, self._last_micros + 1)
        self._last_micros = micros
        return micros

    def post(
        self,
        channel: Channel,
        *,
        text: str,
        blocks: list[dict[str, Any]] | None,
        metadata: dict[str, Any] | None,
        thread_ts: str | None,
        reply_broadcast: bool,
        unfurl_links: bool | None,
        unfurl_media: bool | None,
    ) -> Message | float:
        """Store a message, or return the seconds to wait when the channel is rate limited."""
        with self.lock:
            wait = self.limiter.acquire(channel.id, time.monotonic())
            if wait > 0.0:
                return wait
            micros = self._next_micros()
            message = Message(
                channel=channel.id,
                ts=micros_to_ts(micros),
                micros=micros,
                text=text,
                blocks=blocks,
                metadata=metadata,
                thread_ts=thread_ts,
                reply_broadcast=reply_broadcast,
                unfurl_links=unfurl_links,
                unfurl_media=unfurl_media,
            )
            self.messages.append(message)
            self.by_channel.setdefault(channel.id, []).append(message)
            self.by_key[(channel.id, message.ts)] = message
            if thread_ts is not None:
                parent = self.by_key.get((channel.id, thread_ts))
                if parent is not None and parent is not message:
                    parent.replies.append(message.ts)
            self.stats["messages"] += 1
            return message

    def update(
        self,
        channel_id: str,
        ts: str,
        *,
        text: str | None,
        blocks: list[dict[str, Any]] | None,
        metadata: dict[str, Any] | None,
    ) -> Message | None:
        """Edit a stored message in place; ``None`` when there is no such message."""
        with self.lock:
            message = self.by_key.get((channel_id, ts))
            if message is None:
                return None
            if text is not None:
                message.text = text
            if blocks is not None:
                message.blocks = blocks
            if metadata is not None:
                message.metadata = metadata
            message.edited_ts = micros_to_ts(self._next_micros())
            return message

    def channel_messages(self, channel_id: str) -> list[Message]:
        """A copy of a channel's messages in arrival (= ``ts``) order."""
        with self.lock:
            return list(self.by_channel.get(channel_id, ()))

    def records(self, channel_id: str | None = None) -> list[dict[str, Any]]:
        """Every accepted message (optionally of one channel) in arrival order."""
        with self.lock:
            source = self.messages if channel_id is None else self.by_channel.get(channel_id, [])
            return [m.record() for m in source]

    # -- faults, limits, stats -------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, method: str) -> Fault | None:
        """Consume one use of the first pending fault that matches ``method``."""
        if not self.faults:  # cheap unlocked fast path; re-checked under the lock
            return None
        with self.lock:
            for fault in self.faults:
                if fault.matches(method):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                    self.stats["faults_served"] += 1
                    self.faults_by_kind[fault.kind] += 1
                    if fault.kind == "429":
                        self.stats["http_429"] += 1
                    return fault
        return None

    def pending_faults(self) -> list[dict[str, Any]]:
        with self.lock:
            return [f.describe() for f in self.faults]

    def set_rate_limit(self, per_second: float | None, burst: int) -> None:
        with self.lock:
            self.limiter.configure(per_second, burst)

    def count_call(self, method: str) -> None:
        with self.lock:
            self.stats["calls"] += 1
            self.calls_by_method[method] += 1

    def count_result(self, error: str | None, status: int) -> None:
        with self.lock:
            if error is None:
                self.stats["ok"] += 1
            else:
                self.errors[error] += 1
            if status == 429:
                self.stats["rate_limited"] += 1
                self.stats["http_429"] += 1

    def snapshot_stats(self) -> dict[str, Any]:
        """Counters for ``GET /_sandbox/stats``."""
        with self.lock:
            return {
                "calls": self.stats["calls"],
                "ok": self.stats["ok"],
                "messages": self.stats["messages"],
                "rate_limited": self.stats["rate_limited"],
                "http_429": self.stats["http_429"],
                "faults_served": self.stats["faults_served"],
                "faults_by_kind": dict(self.faults_by_kind),
                "calls_by_method": dict(self.calls_by_method),
                "errors": dict(self.errors),
                "pending_faults": sum(f.remaining for f in self.faults),
                "rate_limit": {"per_second": self.limiter.per_second, "burst": self.limiter.burst},
                "token_revoked": self.revoked,
            }

    def reset(self) -> None:
        """Forget messages, faults, rate-limit buckets, counters and the revoked flag.

        Users, channels (DMs included) and the rate-limit settings stay.
        """
        with self.lock:
            self.messages.clear()
            self.by_channel.clear()
            self.by_key.clear()
            self.faults.clear()
            self.limiter.clear()
            self.stats.clear()
            self.calls_by_method.clear()
            self.errors.clear()
            self.faults_by_kind.clear()
            self.revoked = False
