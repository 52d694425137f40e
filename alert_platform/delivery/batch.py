"""The state one delivery batch shares across its lanes, and what every lane does with it.

:class:`BatchCore` holds the batch's clients, ledger calls (:class:`LedgerOps`), pacing,
counters and results; it records outcomes (the ``slack-responses`` record first, then the
ledger write that makes them final), waits (waking for a stop, keeping a held claim's heartbeat
fresh), makes the batch's read calls (``conversations.history`` / ``.open`` / ``.list``) and
settles a message that fails, goes stale or is left for a later run. The per-lane state machine
is :mod:`alert_platform.delivery.lane`, uncertain-send recovery
:mod:`alert_platform.delivery.recovery`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from sqlalchemy.engine import Connection

from alert_platform.delivery.calls import CallResult, call_api
from alert_platform.delivery.channels import ChannelResolver, RefusedCall
from alert_platform.delivery.ledger import Claim, DeliveryLedger
from alert_platform.delivery.ledger_ops import MAX_GROUP, LedgerOps, is_systemic
from alert_platform.delivery.messages import DeadLetter, OutboundMessage
from alert_platform.delivery.pacing import ChannelPacer
from alert_platform.delivery.report import (
    DELIVERY_ERROR,
    RETRY_CAUSES,
    STALE,
    AlertResult,
    DeliveryReport,
)
from alert_platform.delivery.responses import (
    RETRY_AFTER_MAX,
    Outcome,
    build_response_record,
    classify_api_error,
    classify_exception,
    error_code,
    retry_after_seconds,
)
from alert_platform.slack.client import with_read_retries, without_retries
from alert_platform.slack.retries import read_retry_handlers

LOG = logging.getLogger("alert_platform.delivery")
# slack-sdk logs each transport error at ERROR although the deliverer retries it: keep those
# lines on their own logger, quiet unless configured; the deliverer logs its retries itself.
HTTP_LOG = logging.getLogger("alert_platform.delivery.slack_http")
if HTTP_LOG.level == logging.NOTSET:
    HTTP_LOG.setLevel(logging.CRITICAL)

DEFAULT_MAX_ATTEMPTS = 8  # transient failures per message per run (429s do not count)
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# A claim whose heartbeat this run wrote less than this long ago (and at most lease/15) is
# posted without another heartbeat first: nobody can take it over before the lease runs out.
FRESH_CLAIM_S = 1.0
# A lane claims up to this many of its next messages in one ledger call (single-writer
# ledgers): as many as its pacing lets out within CLAIM_AHEAD_SPAN_S (and lease/6). At Slack's
# real pace (~1 msg/s) that is one: claims made ahead and not posted when a run dies cost the
# next run a history lookup each, which only pays off when posts are fast.
CLAIM_AHEAD = 16
CLAIM_AHEAD_SPAN_S = 0.25
# 429s slack-sdk's handler waits out within one read (they do not count as failures); after
# that the read waits here, as long as Slack keeps answering 429.
READ_RATE_LIMIT_RETRIES = 16

ResponseCallback = Callable[[dict[str, Any]], None]
AfterPost = Callable[[OutboundMessage, dict[str, Any]], None]


class Stop(Exception):
    """Internal: the batch is stopping (auth failure); leave the current message."""


class LostClaim(Exception):
    """Internal: another run took the claim over (ours went stale)."""


class GiveUp(Exception):
    """Internal: Slack stayed unavailable; leave the message for a later run."""


@dataclass
class MessageState:
    """One claimed message on its way through a lane."""

    claim: Claim
    attempts: int = 0
    maybe_posted: bool = False
    check_since: datetime | None = None
    target: str | None = None  # the lane's conversation id (None: unresolvable)


class BatchCore:
    """Shared state and bookkeeping of one batch (module docstring); thread-safe."""

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
        after_post: AfterPost | None,
        retry_after_max: float = RETRY_AFTER_MAX,
        dm_cache: MutableMapping[str, str] | None = None,
    ) -> None:
        # Posts: one HTTP request per call (no idempotency key: never re-sent blindly).
        self.client = without_retries(client, logger=HTTP_LOG)
        self.retry_after_max = retry_after_max
        self.max_attempts = max_attempts
        # Reads: slack-sdk's retry handlers, reporting each retry and waiting in _sleep.
        self._reading = threading.local()
        handlers = read_retry_handlers(
            max(0, max_attempts - 1),
            rate_limit_retries=READ_RATE_LIMIT_RETRIES,
            retry_after=self._retry_after,
            backoff_factor=BACKOFF_BASE / 2,
            sleep=self._read_wait,
            on_retry=self._read_retried,
        )
        self.reads = with_read_retries(client, handlers, logger=HTTP_LOG)
        self.callback_error: BaseException | None = None
        self.ledger = ledger
        self.window = window
        self.pacer = pacer
        self.lease = lease
        self.settle = settle
        self.owner = owner
        self.after_post = after_post
        self._on_response = on_response
        self._response_lock = threading.Lock()
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self.auth_error: str | None = None
        self.report = DeliveryReport()
        self._counts: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self.resolver = ChannelResolver(
            self._resolver_call, self._resolver_pages, dm_cache=dm_cache
        )
        self.ops = LedgerOps(ledger, on_error=lambda _exc: self.stop.set())
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

    def _retry_after(self, headers: Mapping[str, Any] | None) -> float:
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
                raise Stop
            if claim is not None and remaining > beat and not self._touch(claim):
                raise LostClaim

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
    ) -> CallResult:
        """One read (changes nothing in Slack, safe to repeat) through :attr:`reads`, whose
        slack-sdk handlers retry connection errors, timeouts, HTTP 500/503 (at most
        ``max_attempts`` requests) and 429 (``Retry-After``, bounded), each wait in
        :meth:`_sleep` (a stop wakes it, ``claim``'s heartbeat stays fresh). Returns an OK or
        PERMANENT result; an auth error stops the batch (:class:`Stop`); persistent transient
        failures give up (:class:`GiveUp`). ``fn`` may also be a function making reads (a scan
        over pages): its result is the call's ``value``.

        What the handlers leave is still retried here: a transient answer they do not know
        (502, 504, an ``ok: false`` ``internal_error`` / ``ratelimited`` body) or a 429 past
        their budget; the failures they retried count toward ``max_attempts``."""
        failures = 0
        while True:
            if self.stop.is_set():
                raise Stop
            self._count(counter)
            reading = self._reading
            reading.counter, reading.claim, reading.failures = counter, claim, 0
            try:
                call = call_api(fn, **params)
            finally:
                reading.claim = None
            if call.outcome in (Outcome.OK, Outcome.PERMANENT):
                return call
            code = error_code(call.outcome, call.status, call.error)
            if call.outcome is Outcome.FATAL_AUTH:
                self._fatal(code)
                raise Stop
            self._retry(call.outcome)
            if call.outcome is Outcome.RATE_LIMITED:
                self._sleep(self._retry_after(call.headers), claim)
                continue
            failures += 1 + reading.failures
            if failures >= self.max_attempts:
                LOG.warning("%s: %d transient failures (%s); giving up for this run",
                            counter, failures, code)  # fmt: skip
                raise GiveUp
            self._sleep(self._backoff(failures), claim)

    def _read_retried(self, method: str, response: Any, error: Exception | None) -> None:
        """slack-sdk's handler is about to send a read again: count it like any attempt."""
        if response is not None:
            outcome = classify_api_error(response.status_code, None)
        else:
            outcome = (classify_exception(error) if error else None) or Outcome.CONNECTION
        reading = self._reading
        self._retry(outcome)
        self._count(getattr(reading, "counter", None) or "resolve_calls")
        if outcome is not Outcome.RATE_LIMITED:
            reading.failures = getattr(reading, "failures", 0) + 1

    def _read_wait(self, seconds: float) -> None:
        """A slack-sdk handler's wait: wakes for a stop, heartbeats the read's claim."""
        self._sleep(seconds, getattr(self._reading, "claim", None))

    def _page_counted(self, counter: str, number: int) -> None:
        """Page ``number`` (0: the first, counted by :meth:`_read`) is one more request."""
        if number:
            self._count(counter)

    def _resolver_call(self, method: str, **params: Any) -> dict[str, Any]:
        """The channel resolver's single calls (``conversations.open``)."""
        fn = getattr(self.reads, method.replace(".", "_"))
        call = self._read(fn, params, counter="resolve_calls")
        if call.outcome is not Outcome.OK:
            raise RefusedCall(error_code(call.outcome, call.status, call.error))
        return call.data or {}

    def _resolver_pages(self, method: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of the channel resolver's paginated calls (``conversations.list``),
        through slack-sdk's cursor pagination (iterating the first page's response); a page
        that fails for good fails the whole listing, which is then read again from the start."""
        fn = getattr(self.reads, method.replace(".", "_"))

        def every_page(**kwargs: Any) -> list[dict[str, Any]]:
            out = []
            for number, page in enumerate(fn(**kwargs)):
                self._page_counted("resolve_calls", number)
                out.append(dict(page.data))
            return out

        call = self._read(every_page, params, counter="resolve_calls")
        if call.outcome is not Outcome.OK:
            raise RefusedCall(error_code(call.outcome, call.status, call.error))
        return list(call.value or ())

    # -- outcomes --------------------------------------------------------------------------

    def _fatal(self, code: str) -> None:
        with self._lock:
            if self.auth_error is None:
                self.auth_error = code
        self.stop.set()

    def _dead_letter(
        self, message: OutboundMessage, state: MessageState, code: str, *, detail: str = ""
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

    def _failed(
        self,
        message: OutboundMessage,
        state: MessageState | None,
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

    def _abandon(self, message: OutboundMessage, state: MessageState, *, lost: bool) -> None:
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
