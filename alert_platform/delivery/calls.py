"""One Slack Web API call as an :class:`~alert_platform.delivery.responses.Outcome`, and the
``chat.postMessage`` of an alert (with the ``metadata`` an uncertain send is found by)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web import SlackResponse

from alert_platform.delivery.ledger import Claim
from alert_platform.delivery.messages import OutboundMessage, format_rfc3339
from alert_platform.delivery.responses import (
    Outcome,
    classify_api_error,
    classify_exception,
    header,
)

METADATA_EVENT_TYPE = "alert_platform_alert"


@dataclass(frozen=True)
class CallResult:
    """What one call answered (or raised), classified; ``value``: what a function that is not
    a single Web API call returned (e.g. a scan over the pages of a paginated read)."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    headers: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    exception: BaseException | None = None
    value: Any = None

    @property
    def date(self) -> str | None:
        return header(self.headers, "date")


def is_refused(exc: BaseException) -> bool:
    """Connection refused: the request never left, so it cannot have posted."""
    reason = getattr(exc, "reason", None)
    return isinstance(exc, ConnectionRefusedError) or isinstance(reason, ConnectionRefusedError)


def call_api(fn: Callable[..., Any], **kwargs: Any) -> CallResult:
    """``fn(**kwargs)``: a WebClient method, or a function making such calls (its result is
    the ``value``); a transport error or a refusal is an outcome, anything else (a bug)
    propagates."""
    try:
        response = fn(**kwargs)
    except SlackApiError as exc:
        resp = exc.response
        error = resp.get("error") if isinstance(resp.data, dict) else None
        outcome = classify_api_error(resp.status_code, error)
        return CallResult(outcome, resp.status_code, error, dict(resp.headers or {}), None, exc)
    except Exception as exc:
        outcome = classify_exception(exc)
        if outcome is None:
            raise
        return CallResult(outcome, None, None, None, None, exc)
    if not isinstance(response, SlackResponse):
        return CallResult(Outcome.OK, value=response)
    data = response.data if isinstance(response.data, dict) else {}
    return CallResult(Outcome.OK, response.status_code, None, dict(response.headers or {}), data)


def post_alert(
    client: WebClient, message: OutboundMessage, claim: Claim, channel: str
) -> CallResult:
    """One ``chat.postMessage`` of ``message`` to ``channel``, its ``metadata`` carrying the
    alert id and the claim's nonce (``client`` must not retry: see the slack client)."""
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
    return call_api(client.chat_postMessage, **kwargs)
