"""A 429's Retry-After is bounded in the deliverer: inf, nan, negative, huge or garbage waits
within [1, retry_after_max] seconds, then the alert is posted once. A tiny local HTTP server
plays Slack (one 429 with the header under test, then ok); the ledger is a SQLite file."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from slack_sdk import WebClient

from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DELIVERED, DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage

CHANNEL = "C0RETRYAFTER"


class FakeSlack(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.retry_after = "1"
        self.posts: list[float] = []  # monotonic time of each chat.postMessage


class _Handler(BaseHTTPRequestHandler):
    server: FakeSlack

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.endswith("/chat.postMessage"):
            self._answer(200, {"ok": False, "error": "unknown_method"})
            return
        self.server.posts.append(time.monotonic())
        if len(self.server.posts) == 1:
            self._answer(429, {"ok": False, "error": "ratelimited"},
                         {"Retry-After": self.server.retry_after})  # fmt: skip
        else:
            self._answer(200, {"ok": True, "channel": CHANNEL, "ts": f"{len(self.server.posts)}.1"})

    def _answer(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    server = FakeSlack()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("header", "expected_wait"),
    [("inf", 3.0), ("1e308", 3.0), ("99999", 3.0), ("nan", 1.0), ("-50", 1.0),
     ("soon", 1.0), ("0", 1.0), ("2", 2.0)],
)  # fmt: skip
def test_retry_after_is_bounded(
    slack: FakeSlack, tmp_path: Path, header: str, expected_wait: float
) -> None:
    slack.retry_after = header
    client = WebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{slack.server_port}/api/",
                       timeout=5)  # fmt: skip
    message = OutboundMessage("ra-1", CHANNEL, "text", datetime.now(UTC))
    with DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        report = deliver_batch([message], client, ledger, window=24,
                               pacer=ChannelPacer(rate=200.0, burst=50),
                               retry_after_max=3.0)  # fmt: skip
        assert report.delivered == 1 and report.retries["rate_limited"] == 1
        assert ledger.lookup("ra-1")[0].state == DELIVERED
    first, second = slack.posts
    waited = second - first
    # Never below the bound (it is a sleep); the upper margin is for a loaded 2-core machine.
    assert expected_wait - 0.05 <= waited < expected_wait + 10, waited
