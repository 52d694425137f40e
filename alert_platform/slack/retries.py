"""slack-sdk's retry handlers as this project uses them.

:func:`default_retry_handlers`: what a client made by
:func:`~alert_platform.slack.client.make_web_client` retries (connection errors, HTTP 500/503;
429 on request). :func:`read_retry_handlers`: the deliverer's reads (``conversations.history``,
``conversations.open``, ``conversations.list``): slack-sdk's connection-error, server-error and
rate-limit handlers, each with a retry budget of its own kind per request, each retry reported
to an observer and each wait spent in the caller's ``sleep``; the 429 wait is ``Retry-After``
bounded (:func:`bounded_retry_after`; slack-sdk's own handler fails on anything but an integer).
Never give retry handlers to ``chat.postMessage``: it has no idempotency key.
"""

from __future__ import annotations

import http.client
import math
import time
from collections.abc import Callable, Mapping
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

RETRY_AFTER_CAP = 120.0  # seconds; the deliverer passes settings.slack_retry_after_max_s
# Transport errors a read is retried after: slack-sdk's defaults (URLError, ConnectionResetError,
# RemoteDisconnected) plus the other connection errors, a broken HTTP answer and a timeout
# (a read timeout or the call deadline raise TimeoutError, not URLError).
READ_ERROR_TYPES: list[type[Exception]] = [
    URLError,
    ConnectionError,
    RemoteDisconnected,
    http.client.HTTPException,
    TimeoutError,
]
# (Web API method, the answer or None, the exception or None) of a request about to be retried.
RetryObserver = Callable[[str, HttpResponse | None, Exception | None], None]
RetryAfter = Callable[[Mapping[str, Any]], float]


def bounded_retry_after(headers: Mapping[str, Any], maximum: float = RETRY_AFTER_CAP) -> float:
    """``Retry-After`` seconds within ``[1, maximum]``: missing, garbage or ``nan`` -> 1,
    ``inf`` or huge -> ``maximum`` (slack-sdk's own handler fails on anything but an integer)."""
    value: Any = None
    for name, raw in headers.items():
        if str(name).lower() == "retry-after":
            value = raw[0] if isinstance(raw, list | tuple) and raw else raw
            break
    try:
        seconds = float(str(value).strip()[:64])
    except ValueError:
        seconds = 1.0
    if math.isnan(seconds):
        seconds = 1.0
    return min(maximum, max(1.0, seconds))


def _method(request: HttpRequest) -> str:
    return request.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class _Observed(RetryHandler):
    """A handler with a retry budget of its own ``kind`` per request (so that 429s do not eat
    the budget of transient errors), each retry reported to ``on_retry`` and each wait spent in
    ``sleep`` (which may raise to abandon the call)."""

    kind = "transient"

    def __init__(
        self,
        *args: Any,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: RetryObserver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sleep = sleep
        self.on_retry = on_retry

    def _spent(self, state: RetryState) -> int:
        return int((state.custom_values or {}).get(self.kind, 0))

    def can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if self._spent(state) >= self.max_retry_count:
            return False
        return self._can_retry(state=state, request=request, response=response, error=error)

    def interval(self, state: RetryState, response: HttpResponse | None) -> float:
        """Seconds to wait before the next attempt (exponential backoff with jitter)."""
        return self.interval_calculator.calculate_sleep_duration(self._spent(state))

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        seconds = self.interval(state, response)
        if state.custom_values is None:
            state.custom_values = {}
        state.custom_values[self.kind] = self._spent(state) + 1
        if self.on_retry is not None:
            self.on_retry(_method(request), response, error)
        state.next_attempt_requested = True
        self.sleep(seconds)
        state.increment_current_attempt()


class ObservedConnectionErrorRetryHandler(_Observed, ConnectionErrorRetryHandler):
    """slack-sdk's connection-error handler over :data:`READ_ERROR_TYPES`, observed."""

    def __init__(self, max_retry_count: int = 1, **kwargs: Any) -> None:
        kwargs.setdefault("error_types", list(READ_ERROR_TYPES))
        super().__init__(max_retry_count, **kwargs)


class ObservedServerErrorRetryHandler(_Observed, ServerErrorRetryHandler):
    """slack-sdk's server-error handler (HTTP 500 / 503), observed."""


class BoundedRateLimitRetryHandler(_Observed, RateLimitErrorRetryHandler):
    """slack-sdk's 429 handler waiting ``retry_after(headers)`` (default
    :func:`bounded_retry_after`) instead of ``int(Retry-After)``; a budget of its own."""

    kind = "rate_limited"

    def __init__(
        self, max_retry_count: int = 1, *, retry_after: RetryAfter | None = None, **kwargs: Any
    ) -> None:
        super().__init__(max_retry_count, **kwargs)
        self.retry_after = retry_after or bounded_retry_after

    def interval(self, state: RetryState, response: HttpResponse | None) -> float:
        return self.retry_after(response.headers if response is not None else {})


def read_retry_handlers(
    max_retries: int,
    *,
    rate_limit_retries: int,
    retry_after: RetryAfter | None = None,
    backoff_factor: float = 0.25,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: RetryObserver | None = None,
) -> list[RetryHandler]:
    """slack-sdk's handlers for calls that change nothing in Slack (safe to repeat): up to
    ``max_retries`` retries after connection errors, timeouts and HTTP 500/503 (exponential
    backoff), up to ``rate_limit_retries`` after a 429 (``Retry-After`` through
    ``retry_after``, default :func:`bounded_retry_after`)."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor)
    observed: dict[str, Any] = {"sleep": sleep, "on_retry": on_retry}
    return [
        ObservedConnectionErrorRetryHandler(max_retries, interval_calculator=backoff, **observed),
        ObservedServerErrorRetryHandler(max_retries, interval_calculator=backoff, **observed),
        BoundedRateLimitRetryHandler(rate_limit_retries, retry_after=retry_after, **observed),
    ]


def default_retry_handlers(
    max_retries: int = 3, *, backoff_factor: float = 0.5, rate_limits: bool = False
) -> list[RetryHandler]:
    """Connection-error and server-error (500/503) retries with exponential backoff and
    jitter; plus 429 (sleep ``Retry-After``, bounded) when ``rate_limits``."""
    backoff = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor)
    handlers: list[RetryHandler] = [
        ConnectionErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
        ServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=backoff),
    ]
    if rate_limits:
        handlers.append(BoundedRateLimitRetryHandler(max_retry_count=max_retries))
    return handlers
