"""Uncertain-send recovery: was an earlier attempt of this claim posted after all?

Slack's ``chat.postMessage`` has no idempotency key, so after a timeout, a 5xx, a dropped
connection or a run that died between the post and the ledger write, the message may be in
Slack already. Every post carries the claim's nonce in its ``metadata``; before posting again,
the lane reads the conversation's history since the claim (``conversations.history`` with
``include_all_metadata``) and, when the nonce is there, records the message as delivered
(``recovered_uncertain``) instead of posting it twice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from alert_platform.delivery.batch import BatchCore, MessageState
from alert_platform.delivery.channels import is_conversation_id
from alert_platform.delivery.messages import OutboundMessage, format_rfc3339
from alert_platform.delivery.report import AlertResult
from alert_platform.delivery.responses import Outcome

HISTORY_MARGIN = timedelta(seconds=60)  # clock skew between us and Slack
HISTORY_PAGE_SIZE = 200


def recover(batch: BatchCore, message: OutboundMessage, state: MessageState) -> bool:
    """Look for the claim's nonce in the channel; mark delivered when found."""
    found = find_in_history(batch, message, state)
    if found is None:
        return False
    channel, ts = found
    # It was posted at least once (an earlier run may have died before counting it).
    attempts = state.attempts = max(1, state.attempts)
    batch._record(message, ok=True, channel=channel, ts=ts, error=None,
                  attempts=state.attempts, date=None)  # fmt: skip
    batch.ops.call(
        lambda conn: batch.ledger.mark_delivered(
            state.claim, channel, ts, attempts=attempts, conn=conn
        )
    )
    batch._result(AlertResult(message.alert_id, "recovered_uncertain", channel, ts,
                              state.attempts))  # fmt: skip
    return True


def history_channel(state: MessageState) -> str | None:
    """Where an earlier send went: the claim row's channel when it is a conversation id
    (rows record the resolved id), else this run's resolution of the lane."""
    row_channel = state.claim.row.channel
    return row_channel if is_conversation_id(row_channel) else state.target


def find_in_history(
    batch: BatchCore, message: OutboundMessage, state: MessageState
) -> tuple[str, str] | None:
    """``(channel, ts)`` of the post carrying the claim's nonce (or, for a post made before
    nonces, the alert id and event time), else ``None``. Reads the history since the claim
    page by page (slack-sdk's cursor pagination), stopping at the first match; a page that
    fails for good fails the whole lookup, which :meth:`BatchCore._read` then starts again."""
    channel = history_channel(state)
    if channel is None:
        return None  # nowhere to look (and nowhere it could have been posted)
    since = state.check_since or (state.claim.claimed_at - HISTORY_MARGIN)
    nonce = state.claim.nonce
    event_time = format_rfc3339(message.event_time)

    def scan(**params: Any) -> tuple[str, str] | None:
        pages = batch.reads.conversations_history(**params)
        for number, page in enumerate(pages):
            batch._page_counted("history_calls", number)
            for item in page.get("messages") or ():
                payload = ((item.get("metadata") or {}).get("event_payload")) or {}
                if payload.get("nonce") == nonce or (
                    "nonce" not in payload
                    and payload.get("alert_id") == message.alert_id
                    and payload.get("event_time") == event_time
                ):
                    return channel, item.get("ts")
            if not page.get("has_more"):
                return None
        return None

    params = {
        "channel": channel,
        "oldest": f"{max(0.0, since.timestamp()):.6f}",
        "include_all_metadata": True,
        "limit": HISTORY_PAGE_SIZE,
    }
    call = batch._read(scan, params, counter="history_calls", claim=state.claim)
    if call.outcome is Outcome.PERMANENT:
        # e.g. channel_not_found: it cannot hold the message; the post will tell.
        return None
    return call.value
