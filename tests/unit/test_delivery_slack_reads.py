"""The deliverer's reads go through slack-sdk: its retry handlers (429 with a bounded
``Retry-After``, 500/503, connection errors) and its cursor pagination, while
``chat.postMessage`` is never retried by the client. A tiny local HTTP server plays Slack from a
script per method; the ledger is a SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DELIVERED, DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.slack.client import with_read_retries
from alert_platform.slack.retries import bounded_retry_after, read_retry_handlers
from tests.unit.scripted_slack import Answer, FakeSlack, running_fake_slack

CHANNEL = "C0READS"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with running_fake_slack() as server:
        yield server


def client_of(slack: FakeSlack) -> WebClient:
    return WebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{slack.server_port}/api/",
                     timeout=5)  # fmt: skip


def stored_post(slack: FakeSlack, *, status: int = 200) -> Callable[[dict], Answer]:
    """chat.postMessage that stores the message; answers ``status`` (500: stored anyway)."""

    def answer(params: dict) -> Answer:
        ts = f"{1000 + len(slack.posted)}.000100"
        slack.posted.append({"ts": ts, "metadata": params.get("metadata")})
        if status != 200:
            return status, {"ok": False, "error": "internal_error"}, {}
        return 200, {"ok": True, "channel": params["channel"], "ts": ts}, {}

    return answer


SERVER_ERROR: Answer = (500, {"ok": False, "error": "internal_error"}, {})


def test_an_uncertain_post_is_found_on_a_later_history_page(
    slack: FakeSlack, tmp_path: Path
) -> None:
    slack.scripts["chat.postMessage"].append(stored_post(slack, status=500))
    other = {"ts": "999.000001", "metadata": {"event_payload": {"nonce": "someone-else"}}}
    slack.scripts["conversations.history"] += [
        (200, {"ok": True, "messages": [other], "has_more": True,
               "response_metadata": {"next_cursor": "page-2"}}, {}),
        (503, {"ok": False, "error": "service_unavailable"}, {}),  # retried by slack-sdk
        lambda params: (200, {"ok": True, "messages": slack.posted, "has_more": False,
                              "response_metadata": {"next_cursor": ""}}, {}),
    ]  # fmt: skip
    message = OutboundMessage("reads-1", CHANNEL, "text", datetime.now(UTC))
    with DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        report = deliver_batch([message], client_of(slack), ledger, window=24,
                               pacer=ChannelPacer(rate=200.0, burst=50), settle=0.0)  # fmt: skip
        assert ledger.lookup("reads-1")[0].state == DELIVERED
    assert (report.recovered_uncertain, report.post_calls, len(slack.posted)) == (1, 1, 1)
    assert report.retries["server_error"] == 2  # the post's 500 and the page's 503
    assert report.history_calls == 3  # page 1, page 2 (503), page 2 again
    history = slack.calls("conversations.history")
    assert [p.get("cursor") for p in history] == [None, "page-2", "page-2"]
    assert all(p["channel"] == CHANNEL and p["include_all_metadata"] for p in history)


def test_names_are_listed_over_pages_and_a_hostile_retry_after_is_bounded(
    slack: FakeSlack, tmp_path: Path
) -> None:
    slack.scripts["conversations.list"] += [
        (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "inf"}),
        (200, {"ok": True, "channels": [{"id": "C0FIRST", "name": "first"}],
               "response_metadata": {"next_cursor": "c2"}}, {}),
        (200, {"ok": True, "channels": [{"id": CHANNEL, "name": "named"}],
               "response_metadata": {"next_cursor": ""}}, {}),
    ]  # fmt: skip
    slack.default["chat.postMessage"] = stored_post(slack)
    message = OutboundMessage("reads-2", "#named", "text", datetime.now(UTC))
    with DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        report = deliver_batch([message], client_of(slack), ledger, window=24,
                               pacer=ChannelPacer(rate=200.0, burst=50),
                               retry_after_max=1.5)  # fmt: skip
    assert report.delivered == 1 and report.results[0].channel == CHANNEL
    assert report.resolve_calls == 3 and report.retries["rate_limited"] == 1
    listing = slack.calls("conversations.list")
    assert [p.get("cursor") for p in listing] == [None, None, "c2"]
    first, second, _ = slack.times("conversations.list")
    assert 1.5 - 0.05 <= second - first < 1.5 + 10  # inf -> retry_after_max, not for ever
    assert slack.calls("chat.postMessage")[0]["channel"] == CHANNEL


def test_posts_are_never_retried_by_the_client(slack: FakeSlack, tmp_path: Path) -> None:
    """A 500 on chat.postMessage comes back to the deliverer, which checks history before it
    posts again (never a blind re-send by a retry handler)."""
    slack.scripts["chat.postMessage"].append(SERVER_ERROR)  # not stored
    slack.default["chat.postMessage"] = stored_post(slack)
    slack.default["conversations.history"] = lambda params: (
        200, {"ok": True, "messages": [], "has_more": False}, {},
    )  # fmt: skip
    message = OutboundMessage("reads-3", CHANNEL, "text", datetime.now(UTC))
    with DeliveryLedger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        report = deliver_batch([message], client_of(slack), ledger, window=24,
                               pacer=ChannelPacer(rate=200.0, burst=50), settle=0.0)  # fmt: skip
    assert report.delivered == 1 and report.post_calls == 2 and report.history_calls == 1
    methods = [name for _, name, _ in slack.requests]
    assert methods == ["chat.postMessage", "conversations.history", "chat.postMessage"]


def test_read_handlers_budget_report_and_wait(slack: FakeSlack) -> None:
    slack.scripts["conversations.open"] += [
        (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "nan"}),
        SERVER_ERROR,
        (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}),
        SERVER_ERROR,
        SERVER_ERROR,
    ]
    waits: list[float] = []
    retried: list[tuple[str, int | None]] = []
    handlers = read_retry_handlers(
        2,
        rate_limit_retries=5,
        retry_after=lambda headers: bounded_retry_after(headers, 3.0),
        sleep=waits.append,
        on_retry=lambda method, response, error: retried.append(
            (method, None if response is None else response.status_code)
        ),
    )
    reads = with_read_retries(client_of(slack), handlers)
    with pytest.raises(SlackApiError) as caught:
        reads.conversations_open(users="U0ADA")
    # Two 5xx retries (the budget; 429s have their own), the third 500 is the answer.
    assert caught.value.response.status_code == 500
    assert retried == [("conversations.open", s) for s in (429, 500, 429, 500)]
    assert waits[0] == 1.0 and waits[2] == 3.0  # nan -> 1 s, 7 s -> the 3 s cap
    assert all(0 < w < 5 for w in waits)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("inf", 9.0), ("nan", 1.0), ("-3", 1.0), ("garbage", 1.0), (["4"], 4.0), ("1e300", 9.0)],
)
def test_bounded_retry_after(value: object, expected: float) -> None:
    assert bounded_retry_after({"Retry-After": value}, 9.0) == expected
    assert bounded_retry_after({}, 9.0) == 1.0
