"""One lane of a batch: the messages of one channel, in order, through claim, pace, post.

Per message (see :mod:`alert_platform.delivery.deliverer` for the whole protocol): claim it in
the ledger (or take the claim made ahead), recover an uncertain earlier send from the channel
history (:mod:`alert_platform.delivery.recovery`), wait for the channel's pacing, heartbeat the
claim (fencing), post, and settle the outcome: delivered, retried (429: that channel waits;
5xx / timeout: back off, check history before posting again), dead-lettered, or left for a
later run. An auth error stops every lane.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from alert_platform.delivery.batch import (
    LOG,
    BatchCore,
    GiveUp,
    LostClaim,
    MessageState,
    Stop,
)
from alert_platform.delivery.calls import CallResult, is_refused, post_alert
from alert_platform.delivery.channels import Unresolvable
from alert_platform.delivery.ledger import ALREADY_DELIVERED, Claim, ClaimKind
from alert_platform.delivery.ledger_ops import is_systemic
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.delivery.recovery import HISTORY_MARGIN, recover
from alert_platform.delivery.report import AlertResult
from alert_platform.delivery.responses import Outcome, error_code


class Batch(BatchCore):
    """A batch that runs lanes (:meth:`run_lane`, one thread each at a time)."""

    # -- lanes -----------------------------------------------------------------------------

    def run_lane(self, messages: list[OutboundMessage]) -> None:
        lane = messages[0].channel_id
        try:
            target = self._resolve(lane)
        except Stop:
            for message in messages:
                self._result(AlertResult(message.alert_id, "not_attempted"))
            return
        except GiveUp:
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
                state = MessageState(claim, attempts=claim.attempts)
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
        except Stop:
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
        state = MessageState(claim, attempts=claim.attempts)
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
        except (Stop, LostClaim, GiveUp) as exc:
            self._abandon(message, state, lost=isinstance(exc, LostClaim))
        except BaseException as exc:
            if self._systemic(exc):
                self._abandon(message, state, lost=False)
                raise
            self._failed(message, state, exc, stage="deliver")  # type: ignore[arg-type]

    # -- the core loop ---------------------------------------------------------------------

    def _unresolvable(
        self, message: OutboundMessage, state: MessageState, problem: Unresolvable
    ) -> None:
        """The lane has no conversation now: dead-letter the message, unless an earlier run
        already posted it (an uncertain claim: look where that run posted)."""
        if state.maybe_posted and recover(self, message, state):
            return
        state.maybe_posted = False
        self._record(message, ok=False, channel=message.channel_id, ts=None,
                     error=problem.error, attempts=state.attempts, date=None)  # fmt: skip
        self._dead_letter(message, state, problem.error, detail=problem.detail)

    def _post_until_done(self, message: OutboundMessage, state: MessageState) -> None:
        claim = state.claim
        lane = state.target
        assert lane is not None
        failures = 0
        posts = 0
        while True:
            if self.stop.is_set():
                raise Stop
            if state.maybe_posted:
                if recover(self, message, state):
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
                raise LostClaim
            if self.stop.is_set():
                state.attempts -= 1
                raise Stop
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
            refused = call.exception is not None and is_refused(call.exception)
            if (not call.outcome.maybe_posted and call.outcome is not Outcome.OK) or refused:
                state.maybe_posted = False  # 429, permanent, auth, refused: nothing posted
            if call.outcome is Outcome.OK:
                data = call.data or {}
                channel = data.get("channel") or lane
                ts = data.get("ts")
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
                raise Stop
            if call.outcome is Outcome.PERMANENT:
                self._dead_letter(message, state, code)
                return
            self._retry(call.outcome)
            LOG.info("alert %s: %s on channel %s (attempt %d); retrying",
                     message.alert_id, code, lane, state.attempts)  # fmt: skip
            # Posts are retried here, not by slack-sdk's handlers (the client has none): a 429
            # must reach this lane's pacer (no token for the channel until Retry-After), and a
            # 5xx / timeout may have posted, so Slack's history is checked before posting again.
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

    def _post(self, message: OutboundMessage, claim: Claim, channel: str) -> CallResult:
        """One ``chat.postMessage`` of ``message`` (counted in ``post_calls``)."""
        self._count("post_calls")
        return post_alert(self.client, message, claim, channel)
