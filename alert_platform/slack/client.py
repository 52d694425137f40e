"""The Slack Web API client, built from :class:`~alert_platform.settings.Settings`.

``make_web_client`` adds retry handlers explicitly (slack-sdk only enables connection-error
retries by default): connection errors and 5xx with exponential backoff. It does *not* add
``RateLimitErrorRetryHandler`` by default: that handler sleeps inside the call, hiding 429s
from the deliverer's per-channel pacing; the deliverer handles 429 itself (per channel).

Retry handlers re-send a request blindly, which is fine for reads (``auth.test``,
``conversations.history``) but not for ``chat.postMessage`` (no idempotency key: a retried
POST after a 5xx or a reset connection can post twice). The deliverer therefore posts through
:func:`without_retries` and does its own retries, checking Slack before re-posting.

The token never appears in a repr, a log line or an error message raised here.
"""

from __future__ import annotations

import logging

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler

from alert_platform.settings import Settings

DEFAULT_TIMEOUT = 10.0
_LOGGER = logging.getLogger("alert_platform.slack.client")


class SlackClientConfigError(ValueError):
    """The Slack settings cannot make a client; the message names the variable to fix."""


class _RedactedWebClient(WebClient):
    """A WebClient whose repr names the endpoint, never the token."""

    def __repr__(self) -> str:
        return (
            f"WebClient(base_url={self.base_url!r}, token=<redacted>, timeout={self.timeout}, "
            f"retry_handlers={[type(h).__name__ for h in self.retry_handlers]})"
        )


def default_retry_handlers(
    max_retries: int = 3, *, backoff_factor: float = 0.5, rate_limits: bool = False
) -> list[RetryHandler]:
    """Connection-error and server-error (500/503) retries with exponential backoff and
    jitter; plus 429 (sleep ``Retry-After``) when ``rate_limits``."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor)
    handlers: list[RetryHandler] = [
        ConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
        ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
    ]
    if rate_limits:
        handlers.append(RateLimitErrorRetryHandler(max_retry_count=max_retries))
    return handlers


def make_web_client(
    settings: Settings,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_retries: int = 3,
    rate_limit_retries: bool = False,
    logger: logging.Logger | None = None,
) -> WebClient:
    """A WebClient for ``settings.slack_api_url`` with ``settings.slack_bot_token``.

    ``timeout`` is per HTTP request (seconds). Retry handlers: see
    :func:`default_retry_handlers` (``rate_limit_retries`` adds the 429 handler; leave it off
    for anything paced per channel).
    """
    token = settings.slack_bot_token
    if not token:
        raise SlackClientConfigError("SLACK_BOT_TOKEN is empty: set it to the bot token (xoxb-...)")
    base_url = settings.slack_api_url
    if not base_url.endswith("/"):
        base_url += "/"
    return _RedactedWebClient(
        token=token,
        base_url=base_url,
        timeout=timeout,  # type: ignore[arg-type]  # urllib takes float seconds
        retry_handlers=default_retry_handlers(max_retries, rate_limits=rate_limit_retries),
        logger=logger or _LOGGER,
    )


def without_retries(client: WebClient, *, logger: logging.Logger | None = None) -> WebClient:
    """A sibling of ``client`` (same endpoint, token, timeout, TLS, proxy, headers) with no
    retry handlers: every call is exactly one HTTP request, for the caller to retry.
    ``logger`` replaces the client's (slack-sdk logs every transport error at ERROR)."""
    headers = {k: v for k, v in client.headers.items() if k.lower() != "user-agent"}
    return _RedactedWebClient(
        token=client.token,
        base_url=client.base_url,
        timeout=client.timeout,
        ssl=client.ssl,
        proxy=client.proxy,
        headers=headers,
        team_id=client.default_params.get("team_id"),
        user_agent_prefix=None,
        logger=logger or client._logger,
        retry_handlers=[],
    )
