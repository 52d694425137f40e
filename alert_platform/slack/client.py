"""The Slack Web API client, built from :class:`~alert_platform.settings.Settings`.

``make_web_client`` adds retry handlers explicitly (slack-sdk only enables connection-error
retries by default): connection errors and 5xx with exponential backoff. It does *not* add a
429 handler by default: that handler sleeps inside the call, hiding 429s from the deliverer's
per-channel pacing of posts.

Retry handlers re-send a request blindly, which is fine for reads (``auth.test``,
``conversations.history``, ``conversations.open``, ``users.lookupByEmail``) but not for
``chat.postMessage`` (no idempotency key: a retried POST after a 5xx or a reset connection can
post twice). The deliverer therefore posts through :func:`without_retries` (one request per
call; it retries itself, checking Slack before re-posting) and reads through
:func:`with_read_retries`: slack-sdk's own connection-error, server-error and rate-limit
handlers (:mod:`alert_platform.slack.retries`), with a bounded ``Retry-After``, each retry
reported to the caller and each wait spent in the caller's ``sleep`` (the deliverer keeps a
held claim's heartbeat meanwhile).

One deadline per call: slack-sdk's ``timeout`` applies to each socket operation, so a server
that drips bytes (or a proxy that holds the line open) would keep one call going for ever. Every
HTTP request of these clients runs under a watchdog that shuts the connection down when the
call's ``deadline`` (default ``settings.slack_call_timeout_s``, connect + send + the whole
answer) has passed; the call then raises :class:`SlackCallDeadlineExceeded`, a
``TimeoutError`` (``Outcome.TIMEOUT`` for the deliverer: the post may have happened). A client
with retry handlers gives each of its HTTP requests the deadline; the deliverer's
``chat.postMessage`` is one request (:func:`without_retries`). The delivery lease is validated
against the deadline in ``Settings.validate``.

The token never appears in a repr, a log line or an error message raised here.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import io
import itertools
import logging
import socket
import threading
import time
import urllib.request
from typing import Any
from urllib.error import HTTPError

from slack_sdk import WebClient
from slack_sdk.errors import SlackRequestError
from slack_sdk.http_retry.handler import RetryHandler

from alert_platform.settings import Settings
from alert_platform.slack.retries import default_retry_handlers

DEFAULT_TIMEOUT = 10.0
_LOGGER = logging.getLogger("alert_platform.slack.client")


class SlackClientConfigError(ValueError):
    """The Slack settings cannot make a client; the message names the variable to fix."""


class SlackCallDeadlineExceeded(TimeoutError):
    """A Slack Web API call did not finish within its deadline (the connection was shut)."""


class _Deadline:
    """One HTTP request's deadline: the sockets it opened are shut down when it expires."""

    __slots__ = ("_lock", "_sockets", "expired", "expires", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def remaining(self) -> float:
        return self.expires - time.monotonic()


def _shut(sock: socket.socket) -> None:
    """Wake whatever blocks on ``sock`` (a read returns EOF / fails); the owner closes it.
    The plain socket's shutdown, also for a TLS socket (whose own would drop its TLS state
    under the reading thread)."""
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread firing the deadlines of every client in the process (a heap)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> int:
        with self._cond:
            token = next(self._ids)
            heapq.heappush(self._heap, (deadline.expires, token, deadline))
            self._live.add(token)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="slack-call-deadline", daemon=True
                )
                self._thread.start()
            elif self._heap[0][1] == token:
                self._cond.notify()
            return token

    def cancel(self, token: int) -> None:
        with self._cond:
            self._live.discard(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # finished calls
                if not self._heap:
                    self._cond.wait(5.0)
                    continue
                expires, token, deadline = self._heap[0]
                wait = expires - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
            deadline.fire()


_WATCHDOG = _Watchdog()


def _connection_factory(base: type[http.client.HTTPConnection], deadline: _Deadline) -> Any:
    """``base`` connections whose sockets join ``deadline``: the raw socket while it connects
    (and shakes hands), then the connection's own (a TLS socket takes over the raw one's file
    descriptor)."""

    def factory(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        timeout = kwargs.get("timeout")
        remaining = max(0.001, deadline.remaining())
        kwargs["timeout"] = remaining if timeout is None else min(float(timeout), remaining)
        conn = base(host, **kwargs)
        opened = conn._create_connection  # type: ignore[attr-defined]

        def create_connection(*args: Any, **kw: Any) -> socket.socket:
            sock = opened(*args, **kw)
            deadline.attach(sock)
            return sock

        conn._create_connection = create_connection  # type: ignore[attr-defined]
        connect = conn.connect

        def connect_then_attach() -> None:
            connect()
            if conn.sock is not None:
                deadline.attach(conn.sock)

        conn.connect = connect_then_attach  # type: ignore[method-assign]
        return conn

    return factory


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_connection_factory(http.client.HTTPConnection, self._deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, context: Any) -> None:
        super().__init__(context=context)
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        factory = _connection_factory(http.client.HTTPSConnection, self._deadline)
        return self.do_open(factory, req, context=self._context)


class _RedactedWebClient(WebClient):
    """A WebClient whose repr names the endpoint, never the token, and whose every HTTP request
    ends within ``deadline`` seconds in total (module docstring)."""

    deadline: float | None = None

    def __repr__(self) -> str:
        return (
            f"WebClient(base_url={self.base_url!r}, token=<redacted>, timeout={self.timeout}, "
            f"deadline={self.deadline}, "
            f"retry_handlers={[type(h).__name__ for h in self.retry_handlers]})"
        )

    def _perform_urllib_http_request_internal(
        self, url: str, req: urllib.request.Request
    ) -> dict[str, Any]:
        seconds = self.deadline
        if seconds is None or seconds <= 0:
            return super()._perform_urllib_http_request_internal(url, req)
        if not url.lower().startswith("http"):
            raise SlackRequestError(f"Invalid URL detected: {url}")
        if self.proxy is not None and not isinstance(self.proxy, str):
            raise SlackRequestError(f"Invalid proxy detected: {self.proxy} must be a str value")
        deadline = _Deadline(float(seconds))
        handlers: list[Any] = [_HTTPHandler(deadline), _HTTPSHandler(deadline, self.ssl)]
        if self.proxy is not None:
            handlers.append(urllib.request.ProxyHandler({"http": self.proxy, "https": self.proxy}))
        opener = urllib.request.build_opener(*handlers)
        token = _WATCHDOG.watch(deadline)
        try:
            try:
                resp = opener.open(req, timeout=self.timeout)
            except HTTPError as exc:
                # The caller reads an error answer's body: read it here, under the deadline.
                body = exc.read()
                raise HTTPError(exc.url, exc.code, exc.msg, exc.headers, io.BytesIO(body)) from None
            with resp:
                body = resp.read()
            if resp.headers.get_content_type() == "application/gzip":
                return {"status": resp.code, "headers": resp.headers, "body": body}
            charset = resp.headers.get_content_charset() or "utf-8"
            return {"status": resp.code, "headers": resp.headers, "body": body.decode(charset)}
        except HTTPError:
            raise
        except Exception as exc:
            if deadline.expired or deadline.remaining() <= 0:
                raise SlackCallDeadlineExceeded(
                    f"the Slack call to {url} did not finish within its {seconds:g} s deadline"
                ) from exc
            raise
        finally:
            _WATCHDOG.cancel(token)


def make_web_client(
    settings: Settings,
    *,
    timeout: float | None = None,
    deadline: float | None = None,
    max_retries: int = 3,
    rate_limit_retries: bool = False,
    logger: logging.Logger | None = None,
) -> WebClient:
    """A WebClient for ``settings.slack_api_url`` with ``settings.slack_bot_token``.

    ``deadline``: seconds each HTTP request may take in total (module docstring); default
    ``timeout`` when given, else ``settings.slack_call_timeout_s``. ``timeout``: per socket
    operation (default: the deadline). Retry handlers: see :func:`default_retry_handlers`
    (``rate_limit_retries`` adds the 429 handler; leave it off for anything paced per channel).
    """
    token = settings.slack_bot_token.get_secret_value()
    if not token:
        raise SlackClientConfigError("SLACK_BOT_TOKEN is empty: set it to the bot token (xoxb-...)")
    base_url = settings.slack_api_url
    if not base_url.endswith("/"):
        base_url += "/"
    if deadline is None:
        deadline = float(timeout) if timeout is not None else float(settings.slack_call_timeout_s)
    if timeout is None:
        timeout = deadline
    client = _RedactedWebClient(
        token=token,
        base_url=base_url,
        timeout=timeout,  # type: ignore[arg-type]  # urllib takes float seconds
        retry_handlers=default_retry_handlers(max_retries, rate_limits=rate_limit_retries),
        logger=logger or _LOGGER,
    )
    client.deadline = deadline
    return client


def call_deadline(client: WebClient) -> float | None:
    """The per-call deadline of a client made here (``None``: only slack-sdk's timeout)."""
    return getattr(client, "deadline", None)


def without_retries(client: WebClient, *, logger: logging.Logger | None = None) -> WebClient:
    """A sibling of ``client`` (same endpoint, token, timeout, deadline, TLS, proxy, headers)
    with no retry handlers: every call is exactly one HTTP request, for the caller to retry.
    ``logger`` replaces the client's (slack-sdk logs every transport error at ERROR)."""
    return with_retry_handlers(client, [], logger=logger)


def with_read_retries(
    client: WebClient, handlers: list[RetryHandler], *, logger: logging.Logger | None = None
) -> WebClient:
    """A sibling of ``client`` for calls that change nothing in Slack, retried by ``handlers``
    (:func:`~alert_platform.slack.retries.read_retry_handlers`); never for ``chat.postMessage``."""
    return with_retry_handlers(client, handlers, logger=logger)


def with_retry_handlers(
    client: WebClient, handlers: list[RetryHandler], *, logger: logging.Logger | None = None
) -> WebClient:
    """A sibling of ``client`` (same endpoint, token, timeout, deadline, TLS, proxy, headers)
    retrying with ``handlers`` only."""
    headers = {k: v for k, v in client.headers.items() if k.lower() != "user-agent"}
    sibling = _RedactedWebClient(
        token=client.token,
        base_url=client.base_url,
        timeout=client.timeout,
        ssl=client.ssl,
        proxy=client.proxy,
        headers=headers,
        team_id=client.default_params.get("team_id"),
        user_agent_prefix=None,
        logger=logger or client._logger,
        retry_handlers=list(handlers),
    )
    sibling.deadline = call_deadline(client)
    return sibling


def make_ops_client(settings: Settings) -> WebClient:
    """The client of ops-channel notices: one HTTP request per call, no retry handlers (a
    retried ``chat.postMessage`` after a 5xx or a timeout may post twice)."""
    return without_retries(make_web_client(settings))
