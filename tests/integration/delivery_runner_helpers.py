"""Helpers of the delivery-runner tests (outbox, deadlines, hostile records, the fault rows).

* :func:`message_value` / :func:`produce_values`: ``slack-messages`` records on a real broker,
  and the offset ranges they landed in;
* :func:`held`: how many times the Slack sandbox holds each alert (message metadata);
* :func:`responses`: the ``slack-responses`` records of some alerts;
* :class:`SlowSlack`: an HTTP front for the sandbox that, per ``chat.postMessage``, answers 429
  with a hostile ``Retry-After`` or forwards the call and then drips the answer byte by byte.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.error import HTTPError

from alert_platform import topics
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.kafka.writer import BatchProducer
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.integration.flow_helpers import topic_records

ALERT_EVENT_TYPE = "alert_platform_alert"


def message_value(
    alert_id: str, channel: str, *, event_time: datetime | None = None, n: int = 0
) -> dict[str, Any]:
    """A ``slack-messages`` value as the engine writes it."""
    when = event_time or datetime.now(UTC) - timedelta(minutes=1)
    return {
        "alert_id": alert_id,
        "dedup_key": f"test:{alert_id}",
        "pipeline": "test",
        "channel_id": channel,
        "text": f"alert {n} & <friends>",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{n}*"}}],
        "source": {"topic": "t", "partition": 0, "offset": n, "timestamp": 0},
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "event_time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def make_values(channels: Sequence[str], per_channel: int) -> list[dict[str, Any]]:
    """``per_channel`` fresh alerts on each channel (unique ids)."""
    run = uuid.uuid4().hex[:8]
    base = datetime.now(UTC) - timedelta(minutes=1)
    out = []
    for i in range(per_channel):
        for c, channel in enumerate(channels):
            n = i * len(channels) + c
            when = base + timedelta(milliseconds=n)
            out.append(message_value(f"rt:{run}:{n:03d}", channel, event_time=when, n=n))
    return out


def produce_values(
    settings: Settings, values: Iterable[dict[str, Any] | bytes], key: bytes = b"k"
) -> list[OffsetRange]:
    """Write records to ``slack-messages`` (one key: one partition, in order); their ranges."""
    out = BatchProducer.from_settings(settings)
    for value in values:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        out.produce(topics.SLACK_MESSAGES, key, raw)
    return out.flush().written_ranges()


def held(sandbox: SandboxControl, alert_ids: Iterable[str] | None = None) -> Counter[str]:
    """How many times the sandbox holds each alert (of ``alert_ids``, when given)."""
    wanted = None if alert_ids is None else set(alert_ids)
    counts: Counter[str] = Counter()
    for message in sandbox.messages():
        metadata = message.get("metadata") or {}
        if metadata.get("event_type") != ALERT_EVENT_TYPE:
            continue
        alert_id = metadata["event_payload"]["alert_id"]
        if wanted is None or alert_id in wanted:
            counts[alert_id] += 1
    return counts


def responses(settings: Settings, alert_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Every ``slack-responses`` record (repeats included) of ``alert_ids``, in topic order."""
    wanted = set(alert_ids)
    out = []
    for record in topic_records(settings, topics.SLACK_RESPONSES):
        value = json.loads(record.value or b"null")
        if isinstance(value, dict) and value.get("alert_id") in wanted:
            out.append(value)
    return out


class SlowSlack:
    """A local HTTP front for the sandbox's Web API. Each ``chat.postMessage`` takes the next
    scripted behaviour, if any: ``("retry_after", value)`` answers 429 with ``Retry-After:
    value`` (nothing posted); ``("drip", seconds_per_byte)`` forwards the call (the post is
    stored) and then sends the answer one byte at a time. Other calls pass through."""

    def __init__(self, sandbox_api_url: str) -> None:
        self.upstream = sandbox_api_url.rstrip("/") + "/"
        self._script: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self.served: Counter[str] = Counter()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                method = self.path.rsplit("/", 1)[-1]
                step = front._next() if method == "chat.postMessage" else None
                if step is not None and step[0] == "retry_after":
                    front._count("retry_after")
                    self._answer(429, b'{"ok":false,"error":"ratelimited"}',
                                 {"Retry-After": str(step[1])})  # fmt: skip
                    return
                status, headers, answer = front._forward(self.path, body, self.headers)
                if step is not None and step[0] == "drip":
                    front._count("drip")
                    self._answer(status, answer, headers, drip=float(step[1]))
                    return
                self._answer(status, answer, headers)

            def _answer(
                self, status: int, body: bytes, headers: dict[str, str], drip: float = 0.0
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    if not drip:
                        self.wfile.write(body)
                        return
                    for index in range(len(body)):
                        self.wfile.write(body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(drip)
                except OSError:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.api_url = f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    def script(self, steps: Iterable[tuple[str, Any]]) -> None:
        with self._lock:
            self._script.extend(steps)

    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    def _next(self) -> tuple[str, Any] | None:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _count(self, kind: str) -> None:
        with self._lock:
            self.served[kind] += 1

    def _forward(self, path: str, body: bytes, headers: Any) -> tuple[int, dict[str, str], bytes]:
        url = self.upstream + path.split("/api/", 1)[-1]
        kept = ("authorization", "content-type")
        wanted = {k: v for k, v in headers.items() if k.lower() in kept}
        request = urllib.request.Request(url, data=body, headers=wanted, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                extra = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
                return resp.status, extra, resp.read()
        except HTTPError as exc:
            extra = {k: v for k, v in exc.headers.items() if k.lower() == "retry-after"}
            return exc.code, extra, exc.read()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
