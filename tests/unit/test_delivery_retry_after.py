"""A 429's Retry-After is bounded in the deliverer: inf, nan, negative, huge or garbage waits
within [1, retry_after_max] seconds, then the alert is posted once. A tiny local HTTP server
plays Slack (one 429 with the header under test, then ok); the ledger is a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from slack_sdk import WebClient

from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DELIVERED, DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
from tests.unit.scripted_slack import FakeSlack, running_fake_slack

CHANNEL = "C0RETRYAFTER"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with running_fake_slack() as server:
        yield server


@pytest.mark.parametrize(
    ("header", "expected_wait"),
    [("inf", 3.0), ("1e308", 3.0), ("99999", 3.0), ("nan", 1.0), ("-50", 1.0),
     ("soon", 1.0), ("0", 1.0), ("2", 2.0)],
)  # fmt: skip
def test_retry_after_is_bounded(
    slack: FakeSlack, tmp_path: Path, header: str, expected_wait: float
) -> None:
    slack.scripts["chat.postMessage"].append(
        (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": header})
    )
    slack.default["chat.postMessage"] = lambda params: (
        200,
        {"ok": True, "channel": CHANNEL, "ts": f"{len(slack.calls('chat.postMessage'))}.1"},
        {},
    )
    client = WebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{slack.server_port}/api/",
                       timeout=5)  # fmt: skip
    message = OutboundMessage("ra-1", CHANNEL, "text", datetime.now(UTC))
    with DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        report = deliver_batch([message], client, ledger, window=24,
                               pacer=ChannelPacer(rate=200.0, burst=50),
                               retry_after_max=3.0)  # fmt: skip
        assert report.delivered == 1 and report.retries["rate_limited"] == 1
        assert ledger.lookup("ra-1")[0].state == DELIVERED
    first, second = slack.times("chat.postMessage")
    waited = second - first
    # Never below the bound (it is a sleep); the upper margin is for a loaded 2-core machine.
    assert expected_wait - 0.05 <= waited < expected_wait + 10, waited
