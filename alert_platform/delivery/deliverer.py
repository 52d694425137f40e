"""Deliver a batch of alerts to Slack exactly once: claim, pace, post, retry, record.

:func:`deliver_batch` first settles, in one ledger read, every message the ledger already
holds as delivered (``already_delivered`` / ``suppressed_repeat``: a delivered row is final).
It groups the rest into one *lane* per channel (order kept within a channel) and runs the
lanes concurrently on ``max_workers`` threads, longest lanes first, so one channel's 429 or
slow answer never holds up another. Each lane first resolves where it is addressed to a
conversation id (:mod:`alert_platform.delivery.channels`: a user id -> its DM, a name ->
``conversations.list``; cached per batch), so the ledger row records the id, the posts go
to it, and ``conversations.history`` (which takes ids only) can be asked about it by any later
run. A reference that cannot be resolved is dead-lettered (``channel_not_found``). Per message:

1. ``ledger.claim`` (see :mod:`alert_platform.delivery.ledger`): ``DUPLICATE`` -> skip
   (``already_delivered`` / ``suppressed_repeat``); ``IN_FLIGHT`` -> wait for the lease, claim
   again; ``UNCERTAIN`` -> look for the claim's nonce in ``conversations.history`` first.
2. Pace: a per-conversation token bucket (``pacer``; the platform's default is just under
   Slack's ~1 msg/s per channel, ``SLACK_CHANNEL_RATE_PER_S`` / ``SLACK_CHANNEL_BURST``).
3. Heartbeat the claim (fencing: ``False`` means another run took it over, do not post), unless
   this run wrote its heartbeat less than ``FRESH_CLAIM_S`` ago (at most lease/15): nobody
   can take a claim over before its lease runs out, so the first post right after the claim
   skips that write; every retry and every post after a wait writes it.
4. ``chat.postMessage`` with ``metadata`` carrying the alert id and the claim's nonce.
5. Outcome (see :mod:`alert_platform.delivery.responses`):
   ok -> ``mark_delivered``; 429 -> wait ``Retry-After`` on that channel only, retry;
   5xx / timeout / connection -> retry with capped exponential backoff, and because Slack has
   no idempotency key, look for the nonce in the channel history before posting again;
   permanent -> ``mark_failed`` + dead letter, the batch goes on;
   auth -> stop everything, post nothing more, release what was not posted, raise
   :class:`SlackAuthError`.

On a single-writer ledger (SQLite) the ledger calls of all lanes run on one thread, many per
transaction, each in a SAVEPOINT of its own so one failing statement voids nothing else
(:class:`_LedgerOps`): claims and heartbeats wait for their commit, the
``mark_delivered`` of a post does not (until it commits the row stays 'sending' under a fresh
heartbeat; a crash before it is the crash between post and ledger write that the nonce lookup
already recovers). When pacing lets a lane post fast, the lane claims its next few messages in
one call (``CLAIM_AHEAD``); what it claimed and did not post when it stops is released.

Before the lanes start, a message older than ``max_age`` (unless ``allow_stale``) is not
posted: outcome ``stale`` (ledger row and ``slack-responses`` record). One message's failure
(a ledger statement, an unexpected exception) dead-letters that message only.

Every attempt outcome goes to ``on_response`` (a ``slack-responses`` record), before the
ledger write that makes it final (see :func:`deliver_batch`). Nothing is
dropped: a message that cannot be finished now (transient errors past ``max_attempts``, or
held by another live run) is left for the next run and the batch raises
:class:`DeliveryIncompleteError` after finishing the rest.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import Connection

from alert_platform.delivery.channels import (
    ChannelResolver,
    RefusedCall,
    Unresolvable,
    is_conversation_id,
)
from alert_platform.delivery.ledger import (
    ALREADY_DELIVERED,
    Claim,
    ClaimKind,
    DeliveryLedger,
)
from alert_platform.delivery.ledger_ops import MAX_GROUP, is_systemic
from alert_platform.delivery.ledger_ops import LedgerOps as _LedgerOps
from alert_platform.delivery.messages import (
    DeadLetter,
    OutboundMessage,
    format_rfc3339,
    parse_records,
)
from alert_platform.delivery.responses import (
    RETRY_AFTER_MAX,
    Outcome,
    build_response_record,
    classify_api_error,
    classify_exception,
    error_code,
    header,
    retry_after_seconds,
)
from alert_platform.kafka.records import SourceRecord
from alert_platform.slack.client import without_retries

LOG = logging.getLogger("alert_platform.delivery")
# slack-sdk logs each transport error at ERROR although the deliverer retries it: keep those
# lines on their own logger, quiet unless configured; the deliverer logs its retries itself.
HTTP_LOG = logging.getLogger("alert_platform.delivery.slack_http")
if HTTP_LOG.level == logging.NOTSET:
    HTTP_LOG.setLevel(logging.CRITICAL)

METADATA_EVENT_TYPE = "alert_platform_alert"
# Test hook, inert unless set: SIGKILL this process right after chat.postMessage returned ok
# for this alert id, before the ledger write (simulates a crash at the worst moment).
CRASH_AFTER_POST_ENV = "ALERT_PLATFORM_CRASH_AFTER_POST"

DEFAULT_RATE = 0.95  # messages per second per channel (Slack: ~1)
DEFAULT_BURST = 2  # Slack tolerates short bursts; keep one token of headroom
DEFAULT_MAX_WORKERS = 64
DEFAULT_MAX_ATTEMPTS = 8  # transient failures per message per run (429s do not count)
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
HISTORY_MARGIN = timedelta(seconds=60)  # clock skew between us and Slack
RETRY_CAUSES = ("rate_limited", "server_error", "timeout", "connection")
# A claim whose heartbeat this run wrote less than this long ago (and at most lease/15) is
# posted without another heartbeat first: nobody can take it over before the lease runs out.
FRESH_CLAIM_S = 1.0
# A lane claims up to this many of its next messages in one ledger call (single-writer
# ledgers): as many as its pacing lets out within CLAIM_AHEAD_SPAN_S (and lease/6). At Slack's
# real pace (~1 msg/s) that is one: claims made ahead and not posted when a run dies cost the
# next run a history lookup each, which only pays off when posts are fast.
CLAIM_AHEAD = 16
CLAIM_AHEAD_SPAN_S = 0.25

ResponseCallback = Callable[[dict[str, Any]], None]
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


# -- pacing -------------------------------------------------------------------------------


class ChannelPacer:
    """Per-channel token buckets (``rate`` tokens/s, ``burst`` capacity), reservation style:
    :meth:`reserve` takes a token and says how long to wait before using it. Thread-safe;
    share one across batches so back-to-back batches do not burst twice."""

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("pacing needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, as of)

    def reserve(self, channel: str) -> float:
        """Take one token for ``channel``; seconds to wait before posting (0 = now)."""
        with self._lock:
            now = self._clock()
            tokens, as_of = self._buckets.get(channel, (float(self.burst), now))
            # ``as_of`` lies in the future after a 429 (see penalize): nothing refills before.
            start = max(now, as_of)
            tokens = min(float(self.burst), tokens + (start - as_of) * self.rate) - 1.0
            self._buckets[channel] = (tokens, start)
            return (start - now) + max(0.0, -tokens) / self.rate

    def penalize(self, channel: str, seconds: float) -> None:
        """Slack said 429: no token for ``channel`` until ``seconds`` from now."""
        with self._lock:
            self._buckets[channel] = (1.0, self._clock() + max(0.0, seconds))


_SHARED_PACERS: dict[tuple[str, float, int], ChannelPacer] = {}
_SHARED_LOCK = threading.Lock()


def shared_pacer(
    base_url: str, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST
) -> ChannelPacer:
    """The process-wide pacer for one Slack endpoint (used when none is passed)."""
    with _SHARED_LOCK:
        key = (base_url, rate, burst)
        if key not in _SHARED_PACERS:
            _SHARED_PACERS[key] = ChannelPacer(rate, burst)
        return _SHARED_PACERS[key]


# -- the report ---------------------------------------------------------------------------


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


# -- one call ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CallResult:
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    headers: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    exception: BaseException | None = None

    @property
    def date(self) -> str | None:
        return header(self.headers, "date")


def _is_refused(exc: BaseException) -> bool:
    """Connection refused: the request never left, so it cannot have posted."""
    reason = getattr(exc, "reason", None)
    return isinstance(exc, ConnectionRefusedError) or isinstance(reason, ConnectionRefusedError)


def _call(fn: Callable[..., Any], **kwargs: Any) -> _CallResult:
    try:
        response = fn(**kwargs)
    except SlackApiError as exc:
        resp = exc.response
        error = resp.get("error") if isinstance(resp.data, dict) else None
        outcome = classify_api_error(resp.status_code, error)
        return _CallResult(outcome, resp.status_code, error, dict(resp.headers or {}), None, exc)
    except Exception as exc:
        outcome = classify_exception(exc)
        if outcome is None:
            raise
        return _CallResult(outcome, None, None, None, None, exc)
    data = response.data if isinstance(response.data, dict) else {}
    return _CallResult(Outcome.OK, response.status_code, None, dict(response.headers or {}), data)


class _Stop(Exception):
    """Internal: the batch is stopping (auth failure); leave the current message."""


# -- the batch ----------------------------------------------------------------------------


class _Batch:
    def __init__(
        self,
        client: WebClient,
        ledger: DeliveryLedger,
        *,
        window: timedelta,
        on_response: ResponseCallback | None,
        pacer: ChannelPacer,
        lease: timedelta,
        max_attempts: int,
        settle: float,
        owner: str,
        after_post: Callable[[OutboundMessage, dict[str, Any]], None] | None,
        retry_after_max: float = RETRY_AFTER_MAX,
    ) -> None:
        self.client = without_retries(client, logger=HTTP_LOG)
        self.retry_after_max = retry_after_max
        self.callback_error: BaseException | None = None
        self.ledger = ledger
        self.window = window
        self.pacer = pacer
        self.lease = lease
        self.max_attempts = max_attempts
        self.settle = settle
        self.owner = owner
        self.after_post = after_post
        self.crash_after = os.environ.get(CRASH_AFTER_POST_ENV) or None
        self._on_response = on_response
        self._response_lock = threading.Lock()
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.auth_error: str | None = None
        self.report = DeliveryReport()
        self._counts: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self.resolver = ChannelResolver(self._resolver_call)
        self.ops = _LedgerOps(ledger, on_error=lambda _exc: self.stop.set())
        # claim row id -> monotonic time just before our last heartbeat write was requested
        self._beats: dict[int, float] = {}
        self.fresh_s = min(FRESH_CLAIM_S, lease.total_seconds() / 15)
        self.claim_ahead = 1
        if ledger.single_writer:
            span = min(CLAIM_AHEAD_SPAN_S, lease.total_seconds() / 6)
            self.claim_ahead = max(1, min(CLAIM_AHEAD, int(pacer.rate * span)))

    # -- bookkeeping -----------------------------------------------------------------------

    def _result(self, result: AlertResult, dead_letter: DeadLetter | None = None) -> None:
        with self._lock:
            self.report.results.append(result)
            self._counts[result.status] += 1
            if dead_letter is not None:
                self.report.dead_letters.append(dead_letter)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _retry(self, outcome: Outcome) -> None:
        with self._lock:
            self._retries[outcome.value] += 1

    def _emit(self, record: dict[str, Any]) -> None:
        if self._on_response is None:
            return
        with self._response_lock:  # never concurrent, whatever the callback is
            try:
                self._on_response(record)
            except BaseException as exc:
                self.callback_error = exc  # systemic (see _systemic), whatever its type
                raise

    def _systemic(self, exc: BaseException) -> bool:
        return exc is self.callback_error or is_systemic(exc)

    def _retry_after(self, headers: dict[str, Any] | None) -> float:
        """Retry-After, within [1, retry_after_max] whatever the header says."""
        return retry_after_seconds(headers, 1.0, maximum=self.retry_after_max)

    def _record(
        self,
        message: OutboundMessage,
        *,
        ok: bool,
        channel: str | None,
        ts: str | None,
        error: str | None,
        attempts: int,
        date: str | None,
    ) -> None:
        self._emit(
            build_response_record(
                alert_id=message.alert_id,
                ok=ok,
                channel=channel,
                ts=ts,
                error=error,
                attempts=attempts,
                date_header=date,
                delivered_at=datetime.now(UTC) if ok else None,
                dedup_key=message.dedup_key,
                event_time=message.event_time,
            )
        )

    def finish(self, elapsed: float) -> DeliveryReport:
        report = self.report
        for name in (
            "delivered",
            "already_delivered",
            "suppressed_repeat",
            "recovered_uncertain",
            "dead_lettered",
            "stale",
            "released",
            "unfinished",
            "not_attempted",
            "post_calls",
            "history_calls",
            "resolve_calls",
        ):
            setattr(report, name, self._counts[name])
        report.retries = {cause: self._retries[cause] for cause in RETRY_CAUSES}
        report.elapsed = elapsed
        report.stopped_by = self.auth_error
        return report

    # -- waiting ---------------------------------------------------------------------------

    def _sleep(self, seconds: float, claim: Claim | None = None) -> None:
        """Sleep, waking for a stop; keep a held claim's heartbeat fresh meanwhile."""
        deadline = time.monotonic() + seconds
        beat = max(0.05, self.lease.total_seconds() / 3)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.stop.wait(min(remaining, beat)):
                raise _Stop
            if claim is not None and remaining > beat and not self._touch(claim):
                raise _LostClaim

    def _touch(self, claim: Claim, attempts: int | None = None) -> bool:
        """Heartbeat (and attempt count) of a claim we hold; ``False`` when it is not ours."""
        began = time.monotonic()
        ours = self.ops.call(lambda conn: self.ledger.touch(claim, attempts=attempts, conn=conn))
        if ours:
            self._beats[claim.row_id] = began
        return bool(ours)

    def _is_fresh(self, claim: Claim) -> bool:
        beat = self._beats.get(claim.row_id)
        return beat is not None and time.monotonic() - beat < self.fresh_s

    def _backoff(self, failures: int) -> float:
        delay = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** max(0, failures - 1)))
        return delay / 2 + random.random() * delay / 2

    # -- reads (history, channel resolution) -----------------------------------------------

    def _read(
        self,
        fn: Callable[..., Any],
        params: dict[str, Any],
        *,
        counter: str,
        claim: Claim | None = None,
    ) -> _CallResult:
        """One call that changes nothing in Slack (safe to repeat), retried here: 429 waits
        ``Retry-After``, other transient failures back off (at most ``max_attempts``, then
        :class:`_GiveUp`). Returns an OK or PERMANENT result; an auth error stops the batch
        (:class:`_Stop`). ``claim`` (if any) keeps its heartbeat while waiting."""
        failures = 0
        while True:
            if self.stop.is_set():
                raise _Stop
            self._count(counter)
            call = _call(fn, **params)
            if call.outcome in (Outcome.OK, Outcome.PERMANENT):
                return call
            code = error_code(call.outcome, call.status, call.error)
            if call.outcome is Outcome.FATAL_AUTH:
                self._fatal(code)
                raise _Stop
            self._retry(call.outcome)
            if call.outcome is Outcome.RATE_LIMITED:
                self._sleep(self._retry_after(call.headers), claim)
                continue
            failures += 1
            if failures >= self.max_attempts:
                LOG.warning("%s: %d transient failures (%s); giving up for this run",
                            counter, failures, code)  # fmt: skip
                raise _GiveUp
            self._sleep(self._backoff(failures), claim)

    def _resolver_call(self, method: str, **params: Any) -> dict[str, Any]:
        """The channel resolver's Web API calls (``conversations.open`` / ``.list``)."""
        fn = getattr(self.client, method.replace(".", "_"))
        call = self._read(fn, params, counter="resolve_calls")
        if call.outcome is not Outcome.OK:
            raise RefusedCall(error_code(call.outcome, call.status, call.error))
        return call.data or {}

    # -- lanes -----------------------------------------------------------------------------

    def run_lane(self, messages: list[OutboundMessage]) -> None:
        lane = messages[0].channel_id
        try:
            target = self._resolve(lane)
        except _Stop:
            for message in messages:
                self._result(AlertResult(message.alert_id, "not_attempted"))
            return
        except _GiveUp:
            LOG.warning("channel %s could not be looked up in Slack; its %d alert(s) are left "
                        "for a later run", lane, len(messages))  # fmt: skip
            for message in messages:
                self._result(
                    AlertResult(message.alert_id, "unfinished", error="channel_lookup_failed")
                )
            return
        except BaseException as exc:
            if not self._systemic(exc):  # about this lane's address only: its alerts fail
                for message in messages:
                    self._failed(message, None, exc, stage="resolve")  # type: ignore[arg-type]
                return
            self.stop.set()
            for message in messages:
                self._result(AlertResult(message.alert_id, "not_attempted"))
            raise
        index = 0
        while index < len(messages):
            chunk = messages[index : index + self.claim_ahead]
            later = messages[index + len(chunk) :]
            if self.stop.is_set():
                self._not_attempted(messages[index:])
                return
            try:
                claims = self._claim_ahead(chunk, target)
            except BaseException:
                self.stop.set()  # the ledger failed: stop every lane (see below)
                self._not_attempted(messages[index:])
                raise
            for offset, message in enumerate(chunk):
                if self.stop.is_set():
                    self._leave(chunk[offset:], claims[offset:])
                    self._not_attempted(later)
                    return
                try:
                    self.deliver_one(message, target, claims[offset])
                except BaseException:
                    # An unexpected error (the ledger is down, a bug): stop every lane now;
                    # each releases what it holds and the error is raised once all lanes have
                    # stopped.
                    self.stop.set()
                    self._leave(chunk[offset + 1 :], claims[offset + 1 :])
                    self._not_attempted(later)
                    raise
            index += len(chunk)

    def _not_attempted(self, messages: Sequence[OutboundMessage]) -> None:
        for message in messages:
            self._result(AlertResult(message.alert_id, "not_attempted"))

    @staticmethod
    def _addressed(message: OutboundMessage, target: str | Unresolvable) -> OutboundMessage:
        """The message as claimed: addressed to the lane's conversation id when resolved (the
        ledger row records the id)."""
        if isinstance(target, str) and target != message.channel_id:
            return replace(message, channel_id=target)
        return message

    def _claim_ahead(
        self, chunk: Sequence[OutboundMessage], target: str | Unresolvable
    ) -> list[Claim | Exception | None]:
        """Claims of a lane's next messages, decided in one ledger call (each exactly as
        :meth:`DeliveryLedger.claim` decides it alone, in a savepoint of its own: a claim that
        fails is that message's exception, the others stand); ``None`` each for a single
        message (it claims when its turn comes). Heartbeats of claims waiting their turn for
        longer than ``fresh_s`` are refreshed before their post, as after any wait."""
        if len(chunk) == 1:
            return [None]
        addressed = [self._addressed(message, target) for message in chunk]
        began = time.monotonic()

        def claim_all(conn: Connection | None) -> list[Claim | Exception]:
            out: list[Claim | Exception] = []
            for m in addressed:
                try:
                    with self.ledger.savepoint(conn) as point:
                        out.append(self.ledger.claim(m, self.window, owner=self.owner,
                                                     lease=self.lease, conn=point))  # fmt: skip
                except Exception as exc:
                    if is_systemic(exc):
                        raise
                    out.append(exc)
            return out

        claims: list[Claim | Exception] = self.ops.call(claim_all)
        for claim in claims:
            if isinstance(claim, Claim) and claim.kind in (ClaimKind.NEW, ClaimKind.UNCERTAIN):
                self._beats[claim.row_id] = began
        return list(claims)

    def _leave(
        self, messages: Sequence[OutboundMessage], claims: Sequence[Claim | Exception | None]
    ) -> None:
        """The lane stops: give back what it claimed ahead and did not post (an uncertain
        takeover stays 'sending' for the next run to check in Slack)."""
        for message, claim in zip(messages, claims, strict=True):
            if isinstance(claim, Exception):
                self._failed(message, None, claim, stage="claim")
            elif claim is None or claim.kind is ClaimKind.IN_FLIGHT:
                self._result(AlertResult(message.alert_id, "not_attempted"))
            elif claim.kind is ClaimKind.DUPLICATE:
                row = claim.row
                status = claim.reason or ALREADY_DELIVERED
                self._result(AlertResult(message.alert_id, status, row.channel, row.ts,
                                         row.attempts))  # fmt: skip
            else:
                state = _MessageState(claim, attempts=claim.attempts)
                state.maybe_posted = claim.kind is ClaimKind.UNCERTAIN
                try:
                    self._abandon(message, state, lost=False)
                except Exception:  # the ledger is failing: the row stays for the next run
                    self._result(AlertResult(message.alert_id, "unfinished",
                                             attempts=claim.attempts))  # fmt: skip

    def _resolve(self, lane: str) -> str | Unresolvable:
        """The lane's conversation id, or why there is none (its alerts are dead-lettered)."""
        try:
            return self.resolver.resolve(lane)
        except Unresolvable as exc:
            LOG.warning("channel %s cannot be resolved (%s): its alerts are dead-lettered",
                        lane, exc.detail)  # fmt: skip
            return exc

    def _claim(self, message: OutboundMessage) -> Claim | None:
        """Claim, waiting out another worker's live claim; ``None`` when it stays held."""
        waited = 0.0
        max_wait = 3 * self.lease.total_seconds()
        while True:
            began = time.monotonic()
            claim = self.ops.call(
                lambda conn: self.ledger.claim(
                    message, self.window, owner=self.owner, lease=self.lease, conn=conn
                )
            )
            if claim.kind in (ClaimKind.NEW, ClaimKind.UNCERTAIN):
                self._beats[claim.row_id] = began
            if claim.kind is not ClaimKind.IN_FLIGHT:
                return claim
            if waited >= max_wait:
                return None
            # Poll: the holder is usually another lane of this batch, done in milliseconds.
            until_stale = (claim.retry_at - datetime.now(UTC)).total_seconds() + 0.05
            delay = min(max(0.05, until_stale), 0.5)
            self._sleep(delay)
            waited += delay

    def deliver_one(
        self,
        message: OutboundMessage,
        target: str | Unresolvable,
        claim: Claim | Exception | None = None,
    ) -> None:
        """Deliver one message of a lane resolved to ``target`` (a conversation id, or why
        the lane has none); ``claim``: its claim when already made (:meth:`_claim_ahead`; an
        exception when that claim failed). A failure about this message alone (a ledger
        statement, our own code; not :func:`is_systemic`) dead-letters it, or leaves it for a
        later run when it may be in Slack already; the lane goes on."""
        if isinstance(claim, Exception):
            self._failed(message, None, claim, stage="claim")
            return
        try:
            if claim is None or claim.kind is ClaimKind.IN_FLIGHT:
                claim = self._claim(self._addressed(message, target))
        except _Stop:
            self._result(AlertResult(message.alert_id, "not_attempted"))
            return
        except Exception as exc:
            if self._systemic(exc):
                raise
            self._failed(message, None, exc, stage="claim")
            return
        if claim is None:
            LOG.warning("alert %s is being delivered by another run; left for a later run",
                        message.alert_id)  # fmt: skip
            self._result(AlertResult(message.alert_id, "unfinished", error="in_flight_elsewhere"))
            return
        if claim.kind is ClaimKind.DUPLICATE:
            status = claim.reason or ALREADY_DELIVERED
            row = claim.row
            self._result(AlertResult(message.alert_id, status, row.channel, row.ts, row.attempts))
            return
        state = _MessageState(claim, attempts=claim.attempts)
        state.target = target if isinstance(target, str) else None
        # The post (if any) happened after the claim: look from claimed_at (less skew).
        state.check_since = claim.claimed_at - HISTORY_MARGIN
        if claim.kind is ClaimKind.UNCERTAIN:
            state.maybe_posted = True
        try:
            if isinstance(target, Unresolvable):
                self._unresolvable(message, state, target)
            else:
                self._post_until_done(message, state)
        except (_Stop, _LostClaim, _GiveUp) as exc:
            self._abandon(message, state, lost=isinstance(exc, _LostClaim))
        except BaseException as exc:
            if self._systemic(exc):
                self._abandon(message, state, lost=False)
                raise
            self._failed(message, state, exc, stage="deliver")  # type: ignore[arg-type]

    def _failed(
        self,
        message: OutboundMessage,
        state: _MessageState | None,
        exc: Exception,
        *,
        stage: str,
    ) -> None:
        """``message`` failed in our code or its ledger statement (``stage``): a dead letter
        with the reason, unless it may be in Slack already (then its row stays 'sending' and
        the next run looks for it before posting)."""
        detail = f"{stage}: {type(exc).__name__}: {exc}"[:1000]
        LOG.warning("alert %s: %s", message.alert_id, detail)
        if state is not None and state.maybe_posted:
            self._result(AlertResult(message.alert_id, "unfinished", attempts=state.attempts,
                                     error=DELIVERY_ERROR))  # fmt: skip
            return
        attempts = 0 if state is None else state.attempts
        self._record(message, ok=False, channel=message.channel_id, ts=None,
                     error=DELIVERY_ERROR, attempts=attempts, date=None)  # fmt: skip
        if state is not None:
            try:  # record the failure on its row when the ledger lets us (else it stays)
                self.ops.call(
                    lambda conn: self.ledger.mark_failed(
                        state.claim, f"{DELIVERY_ERROR}: {detail}", attempts=attempts, conn=conn
                    )
                )
            except Exception as again:
                if self._systemic(again):
                    raise
        letter = DeadLetter.for_message(message, DELIVERY_ERROR, detail=detail, attempts=attempts)
        self._result(
            AlertResult(message.alert_id, "dead_lettered", message.channel_id, None, attempts,
                        DELIVERY_ERROR),
            letter,
        )  # fmt: skip

    def mark_stale(self, messages: Sequence[OutboundMessage]) -> None:
        """Messages older than the maximum alert age: not posted; outcome ``stale`` (the record
        first, then the ledger row, each message in a savepoint of its own)."""
        for message in messages:
            self._record(message, ok=False, channel=message.channel_id, ts=None, error=STALE,
                         attempts=0, date=None)  # fmt: skip
        for start in range(0, len(messages), MAX_GROUP):
            chunk = messages[start : start + MAX_GROUP]

            def record_all(
                conn: Connection | None, chunk: Sequence[OutboundMessage] = chunk
            ) -> list[Exception | None]:
                out: list[Exception | None] = []
                for message in chunk:
                    try:
                        with self.ledger.savepoint(conn) as point:
                            self.ledger.mark_stale(message, conn=point)
                        out.append(None)
                    except Exception as exc:
                        if is_systemic(exc):
                            raise
                        out.append(exc)
                return out

            for message, error in zip(chunk, self.ops.call(record_all), strict=True):
                if error is not None:
                    LOG.warning("alert %s: stale, but its ledger row could not be written "
                                "(%s: %s)", message.alert_id, type(error).__name__,
                                error)  # fmt: skip
                self._result(AlertResult(message.alert_id, STALE, message.channel_id,
                                         error=STALE))  # fmt: skip

    def _abandon(self, message: OutboundMessage, state: _MessageState, *, lost: bool) -> None:
        """Leave a claimed message unfinished: release it when nothing can have been posted,
        else keep the 'sending' row so the next run checks Slack before posting."""
        if lost:
            self._result(AlertResult(message.alert_id, "unfinished", error="claim_taken_over"))
            return
        if not state.maybe_posted and self.ops.call(
            lambda conn: self.ledger.release(state.claim, conn=conn)
        ):
            self._result(AlertResult(message.alert_id, "released", attempts=state.attempts))
        else:
            self._result(AlertResult(message.alert_id, "unfinished", attempts=state.attempts))

    # -- the core loop ---------------------------------------------------------------------

    def _unresolvable(
        self, message: OutboundMessage, state: _MessageState, problem: Unresolvable
    ) -> None:
        """The lane has no conversation now: dead-letter the message, unless an earlier run
        already posted it (an uncertain claim: look where that run posted)."""
        if state.maybe_posted and self._recover(message, state):
            return
        state.maybe_posted = False
        self._record(message, ok=False, channel=message.channel_id, ts=None,
                     error=problem.error, attempts=state.attempts, date=None)  # fmt: skip
        self._dead_letter(message, state, problem.error, detail=problem.detail)

    def _post_until_done(self, message: OutboundMessage, state: _MessageState) -> None:
        claim = state.claim
        lane = state.target
        assert lane is not None
        failures = 0
        posts = 0
        while True:
            if self.stop.is_set():
                raise _Stop
            if state.maybe_posted:
                if self._recover(message, state):
                    return
                state.maybe_posted = False
            self._sleep(self.pacer.reserve(lane), claim)
            state.attempts += 1
            posts += 1
            # The first post right after the claim needs no heartbeat first (the claim wrote
            # one a moment ago); later ones refresh it and record the attempt count.
            if not (posts == 1 and self._is_fresh(claim)) and not self._touch(
                claim, attempts=state.attempts
            ):
                raise _LostClaim
            if self.stop.is_set():
                state.attempts -= 1
                raise _Stop
            # From here until Slack says otherwise, the message may be in Slack: any failure
            # (even of the ledger write after an ok) must keep the row, never release it.
            state.maybe_posted = True
            try:
                call = self._post(message, claim, lane)
            except Exception as exc:
                # Not a transport error (those are outcomes): the payload could not even be
                # encoded (e.g. nested too deep); nothing left for Slack (earlier attempts were
                # checked above), so the message is dead-lettered, not left 'sending'.
                if not self._systemic(exc):
                    state.maybe_posted = False
                raise
            refused = call.exception is not None and _is_refused(call.exception)
            if (not call.outcome.maybe_posted and call.outcome is not Outcome.OK) or refused:
                state.maybe_posted = False  # 429, permanent, auth, refused: nothing posted
            if call.outcome is Outcome.OK:
                data = call.data or {}
                channel = data.get("channel") or lane
                ts = data.get("ts")
                if self.crash_after is not None and self.crash_after == message.alert_id:
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.after_post is not None:
                    self.after_post(message, data)
                # The outcome record first (the runner writes it durably), then the ledger
                # write that makes the outcome final (see deliver_batch).
                self._record(message, ok=True, channel=channel, ts=ts, error=None,
                             attempts=state.attempts, date=call.date)  # fmt: skip
                self.ops.submit(self._recorder(message, claim, channel, ts, state.attempts))
                self._result(AlertResult(message.alert_id, "delivered", channel, ts,
                                         state.attempts))  # fmt: skip
                return
            code = error_code(call.outcome, call.status, call.error)
            self._record(message, ok=False, channel=lane, ts=None, error=code,
                         attempts=state.attempts, date=call.date)  # fmt: skip
            if call.outcome is Outcome.FATAL_AUTH:
                self._fatal(code)
                raise _Stop
            if call.outcome is Outcome.PERMANENT:
                self._dead_letter(message, state, code)
                return
            self._retry(call.outcome)
            LOG.info("alert %s: %s on channel %s (attempt %d); retrying",
                     message.alert_id, code, lane, state.attempts)  # fmt: skip
            if call.outcome is Outcome.RATE_LIMITED:
                delay = self._retry_after(call.headers)
                self.pacer.penalize(lane, delay)
                continue
            # server error, timeout, connection: maybe posted (unless refused outright)
            failures += 1
            if failures >= self.max_attempts:
                LOG.warning("alert %s: %d transient failures (%s); left for a later run",
                            message.alert_id, failures, code)  # fmt: skip
                self._abandon(message, state, lost=False)
                return
            delay = self._backoff(failures)
            if call.outcome in (Outcome.TIMEOUT, Outcome.CONNECTION) and state.maybe_posted:
                delay = max(delay, self.settle)  # let a slow request land before checking
            self._sleep(delay, claim)

    def _recorder(
        self, message: OutboundMessage, claim: Claim, channel: str, ts: str | None, attempts: int
    ) -> Callable[[Connection | None], bool]:
        """The ledger write of a post that happened (``mark_delivered``)."""

        def record(conn: Connection | None) -> bool:
            recorded = self.ledger.mark_delivered(claim, channel, ts, attempts=attempts, conn=conn)
            if not recorded:
                LOG.warning("alert %s: posted, but its ledger row was no longer 'sending' "
                            "(another run took it over)", message.alert_id)  # fmt: skip
            return recorded

        return record

    def _post(self, message: OutboundMessage, claim: Claim, channel: str) -> _CallResult:
        self._count("post_calls")
        kwargs: dict[str, Any] = {
            "channel": channel,
            "text": message.text,
            "unfurl_links": False,
            "unfurl_media": False,
            "metadata": {
                "event_type": METADATA_EVENT_TYPE,
                "event_payload": {
                    "alert_id": message.alert_id,
                    "dedup_key": message.dedup_key,
                    "nonce": claim.nonce,
                    "event_time": format_rfc3339(message.event_time),
                },
            },
        }
        if message.blocks:
            kwargs["blocks"] = message.blocks
        return _call(self.client.chat_postMessage, **kwargs)

    def _fatal(self, code: str) -> None:
        with self._lock:
            if self.auth_error is None:
                self.auth_error = code
        self.stop.set()

    def _dead_letter(
        self, message: OutboundMessage, state: _MessageState, code: str, *, detail: str = ""
    ) -> None:
        self.ops.call(
            lambda conn: self.ledger.mark_failed(
                state.claim, code, attempts=state.attempts, conn=conn
            )
        )
        letter = DeadLetter.for_message(message, code, detail=detail, attempts=state.attempts)
        self._result(
            AlertResult(message.alert_id, "dead_lettered", message.channel_id, None,
                        state.attempts, code),
            letter,
        )  # fmt: skip

    # -- uncertain sends -------------------------------------------------------------------

    def _recover(self, message: OutboundMessage, state: _MessageState) -> bool:
        """Look for the claim's nonce in the channel; mark delivered when found."""
        found = self._find_in_history(message, state)
        if found is None:
            return False
        channel, ts = found
        # It was posted at least once (an earlier run may have died before counting it).
        attempts = state.attempts = max(1, state.attempts)
        self._record(message, ok=True, channel=channel, ts=ts, error=None,
                     attempts=state.attempts, date=None)  # fmt: skip
        self.ops.call(
            lambda conn: self.ledger.mark_delivered(
                state.claim, channel, ts, attempts=attempts, conn=conn
            )
        )
        self._result(AlertResult(message.alert_id, "recovered_uncertain", channel, ts,
                                 state.attempts))  # fmt: skip
        return True

    @staticmethod
    def _history_channel(state: _MessageState) -> str | None:
        """Where an earlier send went: the claim row's channel when it is a conversation id
        (rows record the resolved id), else this run's resolution of the lane."""
        row_channel = state.claim.row.channel
        return row_channel if is_conversation_id(row_channel) else state.target

    def _find_in_history(
        self, message: OutboundMessage, state: _MessageState
    ) -> tuple[str, str] | None:
        channel = self._history_channel(state)
        if channel is None:
            return None  # nowhere to look (and nowhere it could have been posted)
        since = state.check_since or (state.claim.claimed_at - HISTORY_MARGIN)
        oldest = f"{max(0.0, since.timestamp()):.6f}"
        nonce = state.claim.nonce
        event_time = format_rfc3339(message.event_time)
        cursor: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "channel": channel,
                "oldest": oldest,
                "include_all_metadata": True,
                "limit": 200,
            }
            if cursor:
                kwargs["cursor"] = cursor
            call = self._read(
                self.client.conversations_history, kwargs, counter="history_calls",
                claim=state.claim,
            )  # fmt: skip
            if call.outcome is Outcome.PERMANENT:
                # e.g. channel_not_found: it cannot hold the message; the post will tell.
                return None
            data = call.data or {}
            for item in data.get("messages") or ():
                payload = ((item.get("metadata") or {}).get("event_payload")) or {}
                if payload.get("nonce") == nonce or (
                    "nonce" not in payload
                    and payload.get("alert_id") == message.alert_id
                    and payload.get("event_time") == event_time
                ):
                    return channel, item.get("ts")
            cursor = ((data.get("response_metadata") or {}).get("next_cursor")) or None
            if not data.get("has_more") or not cursor:
                return None


class _LostClaim(Exception):
    """Internal: another run took the claim over (ours went stale)."""


class _GiveUp(Exception):
    """Internal: Slack history stayed unavailable; leave the message for a later run."""


@dataclass
class _MessageState:
    claim: Claim
    attempts: int = 0
    maybe_posted: bool = False
    check_since: datetime | None = None
    target: str | None = None  # the lane's conversation id (None: unresolvable)


# -- entry point ----------------------------------------------------------------------------


def _lanes(messages: Sequence[OutboundMessage]) -> list[list[OutboundMessage]]:
    lanes: dict[str, list[OutboundMessage]] = defaultdict(list)
    for message in messages:
        lanes[message.channel_id].append(message)
    return list(lanes.values())


def _cutoff(max_age: timedelta) -> datetime:
    """now - ``max_age``, clamped to the datetime range."""
    try:
        return datetime.now(UTC) - max_age
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def _horizon(max_future: timedelta) -> datetime:
    """now + ``max_future``, clamped to the datetime range."""
    try:
        return datetime.now(UTC) + max_future
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def deliver_batch(
    messages: Iterable[OutboundMessage | SourceRecord],
    client: WebClient,
    ledger: DeliveryLedger,
    *,
    window: timedelta | float = timedelta(hours=24),
    on_response: ResponseCallback | None = None,
    pacer: ChannelPacer | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    lease: timedelta | None = None,
    settle: float | None = None,
    after_post: Callable[[OutboundMessage, dict[str, Any]], None] | None = None,
    max_age: timedelta | None = None,
    allow_stale: bool = False,
    retry_after_max: float = RETRY_AFTER_MAX,
    max_age_by_pipeline: Mapping[str, timedelta] | None = None,
    max_future: timedelta | None = None,
) -> DeliveryReport:
    """Post each message to Slack at most once per de-duplication window, at least once
    unless Slack refuses it for good (then it is dead-lettered).

    ``messages``: :class:`OutboundMessage` s, or raw ``slack-messages`` records (parsed here;
    unparseable ones become dead letters). ``client``: any WebClient (its retry handlers are
    not used; the deliverer retries itself). ``window``: timedelta or hours
    (``settings.dedup_window_hours``). ``on_response``: called (never concurrently) with a
    ``slack-responses`` record per attempt outcome. ``pacer``: per-channel pacing (default:
    the process-wide one for the client's endpoint at Slack's pace; ``run_delivery`` passes the
    one of the settings). ``max_workers``: lanes (channels) posting at the same time; at
    Slack's pace of ~1 msg/s per channel it also bounds the batch to ~``max_workers`` msg/s.
    ``settle``: seconds to wait after a timeout before checking Slack for the message
    (default: the client timeout, at least 1).
    ``lease``: how long another run's 'sending' claim is respected before it counts as crashed
    (default: the ledger's, 60 s). ``after_post``: test hook called after a successful post,
    before the ledger write. ``max_age``: a message whose ``event_time`` is older than
    now - ``max_age`` is not posted unless ``allow_stale`` (explicit backfills): its outcome
    is ``stale`` (a ``slack-responses`` record, a ``stale`` ledger row that never suppresses a
    later backfill of the event, ``report.stale``); ``None``: no age limit.
    ``max_age_by_pipeline``: a pipeline's own ``max_age`` (e.g. a daily producer's alerts are
    a day old by design), by the message's ``pipeline``. ``max_future``: a message whose
    ``event_time`` lies further ahead than now + ``max_future`` is dead-lettered
    (``event_time_in_future``), whoever wrote it to ``slack-messages``.
    ``retry_after_max``: a 429's ``Retry-After`` is used within ``[1, retry_after_max]`` s.

    Order of effects, per outcome: ``on_response`` is called, and has returned, *before* the
    ledger write that makes the outcome final (``mark_delivered`` after a post or a recovery,
    ``mark_failed`` of a dead letter, ``mark_stale``): a callback that stores its record
    durably (the runner's outbox) never misses an outcome the ledger holds as final. A crash
    in between leaves the row 'sending' (or absent): the next run finds the post in Slack by
    its nonce and writes the record again, with the same ``response_id``.

    One message's failure never stops the others: a ledger statement runs in a savepoint of
    its own, and any exception while handling one message (its claim, its payload, its
    ledger write) that is not :func:`is_systemic` dead-letters it (``delivery_error`` with the
    stage and reason; left 'sending' for a later run when it may have been posted).

    Raises :class:`SlackAuthError` (token unusable; nothing more posted, unposted claims
    released) or :class:`DeliveryIncompleteError` (some messages left for a later run).
    """
    started = time.monotonic()
    parsed: list[OutboundMessage] = []
    records: list[SourceRecord] = []
    for item in messages:
        (records if isinstance(item, SourceRecord) else parsed).append(item)  # type: ignore[arg-type]
    parse_dead: list[DeadLetter] = []
    if records:
        batch_parse = parse_records(records)
        parsed.extend(batch_parse.messages)
        parse_dead = batch_parse.dead_letters
    if isinstance(window, int | float):
        window = timedelta(hours=float(window))
    timeout = float(client.timeout or 30)
    batch = _Batch(
        client,
        ledger,
        window=window,
        on_response=on_response,
        pacer=pacer or shared_pacer(client.base_url),
        lease=ledger.lease if lease is None else lease,
        max_attempts=max_attempts,
        settle=max(1.0, timeout) if settle is None else settle,
        owner=ledger.owner,
        after_post=after_post,
        retry_after_max=retry_after_max,
    )
    for letter in parse_dead:
        batch._result(
            AlertResult(letter.alert_id or "", "dead_lettered", error=letter.error), letter
        )
    # What the ledger already holds as delivered is settled in one read, before any lane
    # starts: no claim transaction, and no channel lookup for a lane with nothing left to post.
    pending: list[OutboundMessage] = []
    stale: list[OutboundMessage] = []
    cutoff = _cutoff(max_age) if max_age is not None and not allow_stale else None
    cutoffs = {} if allow_stale else {p: _cutoff(a) for p, a in (max_age_by_pipeline or {}).items()}
    horizon = _horizon(max_future) if max_future is not None else None
    for message, known in zip(parsed, ledger.duplicates(parsed, window), strict=True):
        if known is None:
            if horizon is not None and message.event_time > horizon:
                detail = f"event_time {format_rfc3339(message.event_time)} is after {horizon}"
                letter = DeadLetter.for_message(message, EVENT_TIME_IN_FUTURE, detail=detail)
                batch._result(
                    AlertResult(message.alert_id, "dead_lettered", message.channel_id,
                                error=EVENT_TIME_IN_FUTURE),
                    letter,
                )  # fmt: skip
                continue
            limit = cutoffs.get(message.pipeline, cutoff)
            (stale if limit is not None and message.event_time < limit else pending).append(message)
            continue
        row = known.row
        status = known.reason or ALREADY_DELIVERED
        batch._result(AlertResult(message.alert_id, status, row.channel, row.ts, row.attempts))
    if stale:
        try:
            batch.mark_stale(stale)
        except BaseException:
            batch.ops.close()
            raise
    # The longest lanes first: a lane is serial, so the longest one bounds the batch's time.
    lanes = deque(sorted(_lanes(pending), key=len, reverse=True))
    errors: list[BaseException] = []
    errors_lock = threading.Lock()

    def work() -> None:
        while True:
            try:
                lane = lanes.popleft()
            except IndexError:
                return
            try:
                batch.run_lane(lane)
            except BaseException as exc:
                batch.stop.set()
                with errors_lock:
                    errors.append(exc)

    try:
        if lanes:
            workers = max(1, min(max_workers, len(lanes)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slack-lane") as pool:
                for future in [pool.submit(work) for _ in range(workers)]:
                    future.result()
    finally:
        batch.ops.close()  # every post recorded in the ledger before the batch reports
    if batch.ops.error is not None:
        errors.append(batch.ops.error)
    report = batch.finish(time.monotonic() - started)
    if errors:
        raise errors[0]
    if batch.auth_error is not None:
        raise SlackAuthError(
            f"Slack rejected the bot token ({batch.auth_error}): check SLACK_BOT_TOKEN. "
            f"Delivery stopped; nothing more was posted; {report.released + report.not_attempted}"
            f" message(s) were left unclaimed for a retry ({report.posted} posted before the "
            "stop).",
            error=batch.auth_error,
            report=report,
        )
    if report.unfinished:
        raise DeliveryIncompleteError(
            f"{report.unfinished} message(s) could not be finished now (Slack kept failing, or "
            "another run holds them); nothing was dropped: retry this batch later.",
            report=report,
        )
    return report
