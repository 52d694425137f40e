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
(:class:`~alert_platform.delivery.ledger_ops.LedgerOps`): claims and heartbeats wait for their
commit, the ``mark_delivered`` of a post does not (until it commits the row stays 'sending'
under a fresh heartbeat; a crash before it is the crash between post and ledger write that the
nonce lookup already recovers). When pacing lets a lane post fast, the lane claims its next few
messages in one call (``CLAIM_AHEAD``); what it claimed and did not post when it stops is
released.

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

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient

from alert_platform.delivery.batch import DEFAULT_MAX_ATTEMPTS, ResponseCallback
from alert_platform.delivery.calls import METADATA_EVENT_TYPE
from alert_platform.delivery.lane import Batch
from alert_platform.delivery.ledger import ALREADY_DELIVERED, DeliveryLedger
from alert_platform.delivery.messages import (
    DeadLetter,
    OutboundMessage,
    format_rfc3339,
    parse_records,
)
from alert_platform.delivery.pacing import DEFAULT_BURST, DEFAULT_RATE, ChannelPacer, shared_pacer
from alert_platform.delivery.report import (
    DELIVERY_ERROR,
    EVENT_TIME_IN_FUTURE,
    RETRY_CAUSES,
    STALE,
    AlertResult,
    DeliveryIncompleteError,
    DeliveryReport,
    SlackAuthError,
)
from alert_platform.delivery.responses import RETRY_AFTER_MAX
from alert_platform.kafka.records import SourceRecord

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_RATE",
    "DELIVERY_ERROR",
    "EVENT_TIME_IN_FUTURE",
    "METADATA_EVENT_TYPE",
    "RETRY_CAUSES",
    "STALE",
    "AlertResult",
    "ChannelPacer",
    "DeliveryIncompleteError",
    "DeliveryReport",
    "ResponseCallback",
    "SlackAuthError",
    "deliver_batch",
    "shared_pacer",
]

DEFAULT_MAX_WORKERS = 64


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


def _relay_stop(outer: threading.Event, inner: threading.Event, done: threading.Event) -> None:
    """Set ``inner`` (the batch's own stop) once ``outer`` is set, until ``done``."""
    while not done.is_set():
        if outer.wait(0.05):
            inner.set()
            return


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
    stop: threading.Event | None = None,
    dm_cache: MutableMapping[str, str] | None = None,
) -> DeliveryReport:
    """Post each message to Slack at most once per de-duplication window, at least once
    unless Slack refuses it for good (then it is dead-lettered).

    ``messages``: :class:`OutboundMessage` s, or raw ``slack-messages`` records (parsed here;
    unparseable ones become dead letters). ``client``: any WebClient (its retry handlers are
    not used: posts go out with none, reads with slack-sdk's handlers configured per batch, see
    :mod:`alert_platform.delivery.batch`). ``window``: timedelta or hours
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
    ``stop``: set from outside (a stream worker draining) to end the batch early, as an auth
    failure does: no further claim or post, the send in flight finishes, claims not posted are
    released; the rest is left ``not_attempted`` for a later run. ``dm_cache``: user id -> DM
    id kept across batches (a stream worker's), so a user's DM is opened once, not per batch.

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
    batch = Batch(
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
        dm_cache=dm_cache,
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

    relayed = threading.Event()
    try:
        if lanes:
            if stop is not None:
                threading.Thread(target=_relay_stop, args=(stop, batch.stop, relayed),
                                 name="slack-batch-stop", daemon=True).start()  # fmt: skip
            workers = max(1, min(max_workers, len(lanes)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slack-lane") as pool:
                for future in [pool.submit(work) for _ in range(workers)]:
                    future.result()
    finally:
        relayed.set()
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
