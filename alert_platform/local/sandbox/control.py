"""A small typed client for the sandbox control API (``/_sandbox/...``), stdlib only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Literal, TypedDict, cast
from urllib.parse import urlencode, urlsplit, urlunsplit


class SandboxMessage(TypedDict):
    """One accepted message as ``GET /_sandbox/messages`` returns it."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None
    metadata: dict[str, Any] | None
    thread_ts: str | None
    user: str


class SandboxControlError(RuntimeError):
    """The control API refused a request (bad input) or answered unexpectedly."""


def root_url(base_url: str) -> str:
    """``http://h:p/api/`` or ``http://h:p`` -> ``http://h:p/``."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/api"):
        path = path[: -len("/api")]
    return urlunsplit((parts.scheme, parts.netloc, path + "/", "", ""))


class SandboxControl:
    """Drive a running sandbox: inspect messages, inject faults, tune limits, seed users."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.root = root_url(base_url)
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.root + "_sandbox/" + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise SandboxControlError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return cast(dict[str, Any], self._request("POST", path, body or {}))

    def health(self) -> bool:
        """True when the sandbox answers its health check; False when it is unreachable."""
        try:
            return bool(self._request("GET", "health").get("ok"))
        except (OSError, ValueError, SandboxControlError):
            return False

    def wait_ready(self, timeout: float = 10.0, interval: float = 0.05) -> None:
        """Poll ``health`` until it passes; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.health():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slack sandbox at {self.root} not ready after {timeout} s")
            time.sleep(interval)

    def messages(self, channel: str | None = None) -> list[SandboxMessage]:
        """Accepted messages in arrival order; ``channel`` is an id, ``#name`` or user id."""
        query = "?" + urlencode({"channel": channel}) if channel else ""
        return cast(list[SandboxMessage], self._request("GET", "messages" + query))

    def inject_faults(
        self,
        count: int,
        kind: Literal["500", "429", "hang"],
        *,
        hang_seconds: float = 30.0,
        hang_mode: Literal["respond", "close"] = "respond",
        methods: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Make the next ``count`` matching API calls fail; returns the pending faults."""
        body: dict[str, Any] = {
            "count": count,
            "kind": kind,
            "hang_seconds": hang_seconds,
            "hang_mode": hang_mode,
        }
        if methods is not None:
            body["methods"] = list(methods)
        return cast(list[dict[str, Any]], self._post("faults", body)["pending"])

    def pending_faults(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._request("GET", "faults"))

    def set_rate_limit(self, per_second: float | None, burst: int | None = None) -> None:
        """Per-channel ``chat.postMessage`` limit; ``per_second`` 0 or ``None`` disables it."""
        body: dict[str, Any] = {"per_second": per_second}
        if burst is not None:
            body["burst"] = burst
        self._post("rate_limit", body)

    def revoke_token(self, revoked: bool = True) -> None:
        """Answer ``token_revoked`` for the bot token (``revoked=False`` restores it)."""
        self._post("token", {"revoked": revoked})

    def reset(self) -> None:
        """Clear messages, faults, counters, rate-limit buckets and the revoked flag."""
        self._post("reset")

    def add_user(self, id: str, email: str, name: str) -> None:
        self._post("users", {"id": id, "email": email, "name": name})

    def add_channel(self, id: str, name: str) -> None:
        self._post("channels", {"id": id, "name": name})

    def stats(self) -> dict[str, Any]:
        """Counters: ``calls``, ``ok``, ``messages``, ``rate_limited``, ``http_429``, ..."""
        return cast(dict[str, Any], self._request("GET", "stats"))
