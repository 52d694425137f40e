"""What a delivery batch reports: one :class:`AlertResult` per message, the
:class:`DeliveryReport` of the batch, and the two errors a batch can end with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alert_platform.delivery.messages import DeadLetter

RETRY_CAUSES = ("rate_limited", "server_error", "timeout", "connection")
# The error code of a message that failed in our own code or the ledger (not Slack's answer).
DELIVERY_ERROR = "delivery_error"
STALE = "stale"
# A message whose event lies further ahead than the delivery's ``max_future`` (clock skew or a
# hostile writer of slack-messages): never posted, dead-lettered.
EVENT_TIME_IN_FUTURE = "event_time_in_future"


class SlackAuthError(RuntimeError):
    """Slack rejected the bot token: delivery stopped, nothing more was posted, and every
    claim that was not posted was released (the whole range can be retried as it is)."""

    def __init__(self, message: str, *, error: str, report: DeliveryReport) -> None:
        super().__init__(message)
        self.error = error
        self.report = report


class DeliveryIncompleteError(RuntimeError):
    """Some messages could not be finished in this run (persistent transient failures, or
    claimed by another live run). Nothing was dropped: retry the batch later."""

    def __init__(self, message: str, *, report: DeliveryReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class AlertResult:
    """What happened to one message in this batch."""

    alert_id: str
    status: str  # delivered | recovered_uncertain | already_delivered | suppressed_repeat |
    # dead_lettered | stale | released | unfinished | not_attempted
    channel: str | None = None
    ts: str | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class DeliveryReport:
    delivered: int = 0
    already_delivered: int = 0
    suppressed_repeat: int = 0
    recovered_uncertain: int = 0
    dead_lettered: int = 0
    stale: int = 0
    released: int = 0
    unfinished: int = 0
    not_attempted: int = 0
    post_calls: int = 0
    history_calls: int = 0
    resolve_calls: int = 0  # conversations.open / conversations.list
    retries: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RETRY_CAUSES, 0))
    elapsed: float = 0.0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    results: list[AlertResult] = field(default_factory=list)
    stopped_by: str | None = None

    @property
    def total_retries(self) -> int:
        return sum(self.retries.values())

    @property
    def posted(self) -> int:
        """Messages now in Slack because of this run (posted, or found after an uncertain
        send)."""
        return self.delivered + self.recovered_uncertain

    def summary(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "already_delivered": self.already_delivered,
            "suppressed_repeat": self.suppressed_repeat,
            "recovered_uncertain": self.recovered_uncertain,
            "dead_lettered": self.dead_lettered,
            "stale": self.stale,
            "released": self.released,
            "unfinished": self.unfinished,
            "not_attempted": self.not_attempted,
            "post_calls": self.post_calls,
            "history_calls": self.history_calls,
            "resolve_calls": self.resolve_calls,
            "retries": dict(self.retries),
            "elapsed": round(self.elapsed, 3),
            "stopped_by": self.stopped_by,
        }
