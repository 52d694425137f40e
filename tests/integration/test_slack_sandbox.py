"""The local Slack Web API sandbox, driven by the real ``slack_sdk.WebClient``."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from alert_platform.local.sandbox import SandboxControl, SandboxControlError, SandboxServer

pytestmark = pytest.mark.integration

TOKEN = "xoxb-sandbox-test"
ALICE = {"id": "U0ALICE", "email": "Alice.Smith@Example.com", "name": "Alice Smith"}
METADATA = {"event_type": "alert_posted", "event_payload": {"alert_id": "a-1"}}


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    server = SandboxServer(token=TOKEN).start()
    server.state.add_user(ALICE["id"], ALICE["email"], ALICE["name"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(sandbox: SandboxServer) -> WebClient:
    return WebClient(token=TOKEN, base_url=sandbox.url, timeout=5)


@pytest.fixture
def control(sandbox: SandboxServer) -> SandboxControl:
    return SandboxControl(sandbox.url)


def slack_error(call: Any, **kwargs: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        call(**kwargs)
    return info.value


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text}}


# -- happy paths ---------------------------------------------------------------------------


def test_health_and_auth_test(sandbox: SandboxServer, client: WebClient) -> None:
    assert sandbox.url == f"http://127.0.0.1:{sandbox.port}/api/"
    with urllib.request.urlopen(sandbox.root_url + "_sandbox/health", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"ok": True}
    reply = client.auth_test()
    assert reply["ok"] is True
    assert reply["user_id"].startswith("U")
    assert reply["bot_id"].startswith("B")


def test_post_to_channel_name_id_and_user_dm(client: WebClient, control: SandboxControl) -> None:
    by_hash = client.chat_postMessage(channel="#alerts-unrouted", text="one", metadata=METADATA)
    by_name = client.chat_postMessage(channel="alerts-ops", text="two")
    by_id = client.chat_postMessage(channel="C0OPS", text="three", thread_ts=by_name["ts"])
    dm = client.chat_postMessage(
        channel=ALICE["id"],
        text="fallback",
        blocks=[header("Connector failed"), section("*db-1* is down")],
        unfurl_links=False,
        unfurl_media=False,
    )

    assert by_hash["channel"] == "C0UNROUTED"
    assert by_name["channel"] == by_id["channel"] == "C0OPS"
    assert dm["channel"].startswith("D")
    assert dm["message"]["blocks"][0]["type"] == "header"
    assert by_hash["message"]["metadata"] == METADATA
    assert by_hash.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "Date" in by_hash.headers

    assert client.conversations_open(users=ALICE["id"])["channel"]["id"] == dm["channel"]

    records = control.messages()
    assert [r["text"] for r in records] == ["one", "two", "three", "fallback"]
    assert records[0] == {
        "channel": "C0UNROUTED",
        "ts": by_hash["ts"],
        "text": "one",
        "blocks": None,
        "metadata": METADATA,
        "thread_ts": None,
        "user": records[0]["user"],
    }
    assert records[2]["thread_ts"] == by_name["ts"]
    assert records[3]["blocks"][1]["text"]["text"] == "*db-1* is down"
    assert [r["text"] for r in control.messages(channel="#alerts-ops")] == ["two", "three"]
    assert [r["text"] for r in control.messages(channel=ALICE["id"])] == ["fallback"]


def test_conversations_open_says_whether_the_dm_already_existed(
    sandbox: SandboxServer, client: WebClient
) -> None:
    first = client.conversations_open(users=ALICE["id"])
    again = client.conversations_open(users=[ALICE["id"]])
    assert first["channel"]["id"] == again["channel"]["id"]
    assert first.get("already_open") is False
    assert again["already_open"] is True
    assert slack_error(client.conversations_open, users="U0NOBODY").response["error"] == (
        "user_not_found"
    )


def test_ts_unique_and_increasing_under_concurrency(
    client: WebClient, control: SandboxControl
) -> None:
    control.set_rate_limit(None)

    def post(i: int) -> str:
        return client.chat_postMessage(channel="C0OPS", text=f"m{i}")["ts"]

    with ThreadPoolExecutor(8) as pool:
        stamps = list(pool.map(post, range(80)))
    assert len(set(stamps)) == 80
    arrival = [r["ts"] for r in control.messages()]
    assert arrival == sorted(arrival, key=lambda ts: tuple(map(int, ts.split("."))))
    assert all(len(ts.split(".")[1]) == 6 for ts in stamps)


def test_form_encoded_body_with_json_string_blocks(
    client: WebClient, control: SandboxControl
) -> None:
    # api_call(params=...) sends application/x-www-form-urlencoded, like older code paths.
    reply = client.api_call(
        "chat.postMessage",
        params={
            "channel": "#alerts-ops",
            "text": "form",
            "blocks": json.dumps([section("from a form")]),
            "metadata": json.dumps(METADATA),
            "unfurl_links": "false",
        },
    )
    assert reply["ok"] is True
    record = control.messages()[-1]
    assert record["blocks"] == [section("from a form")]
    assert record["metadata"] == METADATA


def test_get_with_query_params_and_token_param(sandbox: SandboxServer) -> None:
    query = urlencode({"token": TOKEN, "email": ALICE["email"].upper()})
    url = f"{sandbox.url}users.lookupByEmail?{query}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["ok"] is True
    assert body["user"]["id"] == ALICE["id"]


def test_keep_alive_serves_several_requests_on_one_connection(sandbox: SandboxServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    try:
        conn.connect()
        first_socket = conn.sock
        for _ in range(3):
            conn.request("POST", "/api/auth.test", headers={"Authorization": f"Bearer {TOKEN}"})
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["ok"] is True
            assert response.getheader("Connection") != "close"
        assert conn.sock is first_socket
    finally:
        conn.close()


# -- Slack errors ----------------------------------------------------------------------------


def test_auth_errors(sandbox: SandboxServer, control: SandboxControl) -> None:
    anonymous = WebClient(base_url=sandbox.url, timeout=5)
    wrong = WebClient(token="xoxb-wrong", base_url=sandbox.url, timeout=5)
    good = WebClient(token=TOKEN, base_url=sandbox.url, timeout=5)

    missing = slack_error(anonymous.chat_postMessage, channel="C0OPS", text="x")
    assert missing.response.status_code == 200
    assert missing.response["error"] == "not_authed"
    assert slack_error(wrong.auth_test).response["error"] == "invalid_auth"

    control.revoke_token()
    assert slack_error(good.auth_test).response["error"] == "token_revoked"
    assert slack_error(wrong.auth_test).response["error"] == "invalid_auth"
    control.revoke_token(revoked=False)
    assert good.auth_test()["ok"] is True
    assert control.messages() == []


@pytest.mark.parametrize("channel", ["C0NOPE", "#no-such-channel", "no-such-channel", "U0NOBODY"])
def test_channel_not_found(client: WebClient, channel: str) -> None:
    error = slack_error(client.chat_postMessage, channel=channel, text="x")
    assert error.response["error"] == "channel_not_found"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_no_text(client: WebClient, control: SandboxControl) -> None:
    assert slack_error(client.chat_postMessage, channel="C0OPS").response["error"] == "no_text"
    error = slack_error(client.chat_postMessage, channel="C0OPS", text="", blocks=[])
    assert error.response["error"] == "no_text"
    assert control.messages() == []


@pytest.mark.parametrize(
    ("blocks", "pointer"),
    [
        ("this is not json", "/blocks"),
        (json.dumps({"type": "section"}), "/blocks"),
        ([section("x")] * 51, "/blocks"),
        ([section("x" * 3001)], "/blocks/0/text/text"),
        ([section("ok"), header("h" * 151)], "/blocks/1/text/text"),
        ([section("ok"), {"text": {"type": "mrkdwn", "text": "no type"}}], "/blocks/1"),
    ],
    ids=["not-json", "not-array", "51-blocks", "section-3001", "header-151", "no-type"],
)
def test_invalid_blocks(
    client: WebClient, control: SandboxControl, blocks: Any, pointer: str
) -> None:
    error = slack_error(client.chat_postMessage, channel="C0OPS", text="fallback", blocks=blocks)
    assert error.response["error"] == "invalid_blocks"
    assert f"[json-pointer:{pointer}]" in error.response["errors"][0]
    assert control.messages() == []


def test_block_limits_are_inclusive(client: WebClient) -> None:
    at_limits = [header("h" * 150), section("s" * 3000), *[section("x")] * 48]
    assert len(at_limits) == 50
    assert client.chat_postMessage(channel="C0OPS", text="t", blocks=at_limits)["ok"] is True


def test_msg_too_long(client: WebClient, control: SandboxControl) -> None:
    error = slack_error(client.chat_postMessage, channel="C0OPS", text="x" * 40_001)
    assert error.response["error"] == "msg_too_long"
    assert client.chat_postMessage(channel="C0OPS", text="x" * 40_000)["ok"] is True
    assert len(control.messages()) == 1


def test_invalid_metadata(client: WebClient) -> None:
    error = slack_error(
        client.chat_postMessage, channel="C0OPS", text="x", metadata={"event_payload": {}}
    )
    assert error.response["error"] == "invalid_metadata_schema"


# -- rate limiting ---------------------------------------------------------------------------


def test_rate_limit_429_after_burst(sandbox: SandboxServer, control: SandboxControl) -> None:
    client = WebClient(token=TOKEN, base_url=sandbox.url, timeout=5, retry_handlers=[])
    for i in range(3):
        client.chat_postMessage(channel="C0OPS", text=f"burst {i}")
    error = slack_error(client.chat_postMessage, channel="C0OPS", text="one too many")
    assert error.response.status_code == 429
    assert error.response["error"] == "ratelimited"
    retry_after = int(error.response.headers["Retry-After"])
    assert retry_after >= 1
    # The bucket is per channel.
    assert client.chat_postMessage(channel="C0UNROUTED", text="elsewhere")["ok"] is True
    stats = control.stats()
    assert stats["rate_limited"] == 1
    assert stats["http_429"] == 1
    assert len(control.messages()) == 4

    control.set_rate_limit(0)
    for i in range(10):
        client.chat_postMessage(channel="C0OPS", text=f"unlimited {i}")


def test_retry_after_is_honoured_by_the_sdk_retry_handler(
    sandbox: SandboxServer, control: SandboxControl
) -> None:
    control.set_rate_limit(per_second=1, burst=1)
    client = WebClient(
        token=TOKEN,
        base_url=sandbox.url,
        timeout=5,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    started = time.monotonic()
    client.chat_postMessage(channel="C0OPS", text="first")
    client.chat_postMessage(channel="C0OPS", text="second")  # 429, waits Retry-After, retries
    assert time.monotonic() - started >= 0.9
    assert [r["text"] for r in control.messages()] == ["first", "second"]
    assert control.stats()["rate_limited"] == 1


# -- fault injection -------------------------------------------------------------------------


def test_injected_500_applies_to_the_next_matching_calls(
    client: WebClient, control: SandboxControl
) -> None:
    control.inject_faults(2, "500", methods=["chat.postMessage"])
    assert client.auth_test()["ok"] is True  # other methods are unaffected
    for _ in range(2):
        error = slack_error(client.chat_postMessage, channel="C0OPS", text="x")
        assert error.response.status_code == 500
        assert error.response["error"] == "internal_error"
    assert control.messages() == []
    assert client.chat_postMessage(channel="C0OPS", text="after")["ok"] is True
    stats = control.stats()
    assert stats["faults_served"] == 2
    assert stats["faults_by_kind"] == {"500": 2}
    assert control.pending_faults() == []


def test_injected_429(client: WebClient, control: SandboxControl) -> None:
    control.inject_faults(1, "429")
    error = slack_error(client.auth_test)
    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "1"
    assert client.auth_test()["ok"] is True


def test_hang_respond_stores_the_post_and_answers_late(
    sandbox: SandboxServer, control: SandboxControl
) -> None:
    impatient = WebClient(token=TOKEN, base_url=sandbox.url, timeout=0.5, retry_handlers=[])
    control.inject_faults(1, "hang", hang_seconds=2, methods=["chat.postMessage"])
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        impatient.chat_postMessage(channel="C0OPS", text="uncertain", metadata=METADATA)
    assert time.monotonic() - started < 1.5

    # The send is uncertain for the client, but it landed: find it by its metadata.
    client = WebClient(token=TOKEN, base_url=sandbox.url, timeout=5)
    history = client.conversations_history(channel="C0OPS", include_all_metadata=True)
    found = [
        m
        for m in history["messages"]
        if m.get("metadata", {}).get("event_payload", {}).get("alert_id") == "a-1"
    ]
    assert len(found) == 1
    assert found[0]["text"] == "uncertain"

    patient = WebClient(token=TOKEN, base_url=sandbox.url, timeout=5)
    control.inject_faults(1, "hang", hang_seconds=0.3)
    started = time.monotonic()
    assert patient.auth_test()["ok"] is True
    assert time.monotonic() - started >= 0.3


def test_hang_close_drops_the_connection_without_storing(
    sandbox: SandboxServer, control: SandboxControl
) -> None:
    no_retry = WebClient(token=TOKEN, base_url=sandbox.url, timeout=5, retry_handlers=[])
    control.inject_faults(1, "hang", hang_seconds=0.2, hang_mode="close")
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
        no_retry.chat_postMessage(channel="C0OPS", text="lost")
    assert control.messages() == []

    # WebClient's default ConnectionErrorRetryHandler retries a dropped connection once.
    default = WebClient(token=TOKEN, base_url=sandbox.url, timeout=5)
    control.inject_faults(1, "hang", hang_seconds=0.1, hang_mode="close")
    assert default.chat_postMessage(channel="C0OPS", text="retried")["ok"] is True
    assert [r["text"] for r in control.messages()] == ["retried"]


def test_bad_fault_request_is_rejected(control: SandboxControl) -> None:
    with pytest.raises(SandboxControlError, match="kind"):
        control.inject_faults(1, "418")  # type: ignore[arg-type]
    assert control.pending_faults() == []


# -- reads -----------------------------------------------------------------------------------


def test_history_newest_first_with_metadata_and_pagination(
    client: WebClient, control: SandboxControl
) -> None:
    control.set_rate_limit(None)
    stamps = []
    for i in range(5):
        metadata = {"event_type": "alert_posted", "event_payload": {"alert_id": f"a-{i}"}}
        stamps.append(
            client.chat_postMessage(channel="C0OPS", text=f"m{i}", metadata=metadata)["ts"]
        )
    client.chat_postMessage(channel="C0OPS", text="reply", thread_ts=stamps[0])
    client.chat_postMessage(channel="C0UNROUTED", text="other channel")

    page = client.conversations_history(channel="C0OPS", limit=2, include_all_metadata=True)
    assert [m["text"] for m in page["messages"]] == ["m4", "m3"]
    assert [m["metadata"]["event_payload"]["alert_id"] for m in page["messages"]] == ["a-4", "a-3"]
    assert page["has_more"] is True
    cursor = page["response_metadata"]["next_cursor"]
    rest = client.conversations_history(channel="C0OPS", limit=10, cursor=cursor)
    assert [m["text"] for m in rest["messages"]] == ["m2", "m1", "m0"]  # replies stay in threads
    assert rest["has_more"] is False
    assert rest["messages"][-1]["reply_count"] == 1

    window = client.conversations_history(channel="C0OPS", oldest=stamps[1], latest=stamps[3])
    assert [m["text"] for m in window["messages"]] == ["m2"]
    inclusive = client.conversations_history(
        channel="C0OPS", oldest=stamps[1], latest=stamps[3], inclusive=True
    )
    assert [m["text"] for m in inclusive["messages"]] == ["m3", "m2", "m1"]

    replies = client.conversations_replies(channel="C0OPS", ts=stamps[0])
    assert [m["text"] for m in replies["messages"]] == ["m0", "reply"]
    missing = slack_error(client.conversations_history, channel="C0MISSING")
    assert missing.response["error"] == "channel_not_found"


def test_conversations_list_types_and_cursor_pagination(
    client: WebClient, control: SandboxControl
) -> None:
    for i in range(5):
        control.add_channel(f"C1PAGE{i}", f"page-{i}")
    control.add_channel("G1SECRET", "#secret-ops")
    dm = client.conversations_open(users=ALICE["id"])["channel"]["id"]

    public = client.conversations_list()["channels"]  # default types: public_channel
    assert "G1SECRET" not in {c["id"] for c in public}
    ops = next(c for c in public if c["id"] == "C0OPS")
    assert ops["name"] == "alerts-ops" and ops["is_channel"] and not ops["is_private"]

    seen: list[dict[str, Any]] = []
    cursor, pages = "", 0
    while True:
        page = client.conversations_list(
            types="public_channel,private_channel", limit=2, cursor=cursor or None,
            exclude_archived=True,
        )  # fmt: skip
        assert len(page["channels"]) <= 2
        seen.extend(page["channels"])
        pages += 1
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            break
    names = {c["name"]: c["id"] for c in seen}
    assert len(seen) == len(names) == 8 and pages == 4  # 2 defaults + 5 + 1 private
    assert names["secret-ops"] == "G1SECRET" and names["page-4"] == "C1PAGE4"
    assert next(c for c in seen if c["id"] == "G1SECRET")["is_private"] is True
    assert [c["id"] for c in seen] == sorted(c["id"] for c in seen)

    ims = client.conversations_list(types="im")["channels"]
    assert [(c["id"], c["user"], c["is_im"]) for c in ims] == [(dm, ALICE["id"], True)]

    bad_types = slack_error(client.conversations_list, types="public_channel,bogus")
    assert bad_types.response["error"] == "invalid_types"
    bad_cursor = slack_error(client.conversations_list, cursor="not-a-cursor")
    assert bad_cursor.response["error"] == "invalid_cursor"
    assert control.stats()["calls_by_method"]["conversations.list"] == 1 + pages + 1 + 2


@pytest.mark.parametrize("ref", ["#alerts-ops", "alerts-ops", ALICE["id"]])
def test_reads_and_edits_take_conversation_ids_only(
    client: WebClient, control: SandboxControl, ref: str
) -> None:
    # As in Slack: chat.postMessage accepts a #name, a bare name or a user id, but
    # conversations.history / .replies and chat.update need the conversation's id.
    posted = client.chat_postMessage(channel=ref, text="by reference")
    channel_id = posted["channel"]
    assert channel_id == ("C0OPS" if "alerts-ops" in ref else "D" + ALICE["id"][1:])
    for call, extra in (
        (client.conversations_history, {}),
        (client.conversations_replies, {"ts": posted["ts"]}),
        (client.chat_update, {"ts": posted["ts"], "text": "edited"}),
    ):
        error = slack_error(call, channel=ref, **extra)
        assert error.response["error"] == "channel_not_found", call
        assert call(channel=channel_id, **extra)["ok"] is True
    history = client.conversations_history(channel=channel_id)["messages"]
    assert [m["text"] for m in history] == ["edited"]


def test_users_lookup_by_email_is_case_insensitive(client: WebClient) -> None:
    for email in ("alice.smith@example.com", "ALICE.SMITH@EXAMPLE.COM", ALICE["email"]):
        assert client.users_lookupByEmail(email=email)["user"]["id"] == ALICE["id"]
    error = slack_error(client.users_lookupByEmail, email="nobody@example.com")
    assert error.response["error"] == "users_not_found"
    members = client.users_list()["members"]
    alice = next(m for m in members if m["id"] == ALICE["id"])
    assert alice["profile"]["email"] == ALICE["email"]


def test_chat_update(client: WebClient, control: SandboxControl) -> None:
    posted = client.chat_postMessage(channel="#alerts-ops", text="before")
    updated = client.chat_update(channel=posted["channel"], ts=posted["ts"], text="after")
    assert updated["ts"] == posted["ts"]
    assert control.messages()[0]["text"] == "after"
    error = slack_error(client.chat_update, channel="C0OPS", ts="1.000001", text="x")
    assert error.response["error"] == "message_not_found"


# -- control API, seed, page -----------------------------------------------------------------


def test_reset_keeps_directory_and_added_entries_work(
    client: WebClient, control: SandboxControl
) -> None:
    control.add_channel("C0PAYMENTS", "#payments-alerts")
    control.add_user("U0BOB", "bob@example.com", "Bob")
    client.chat_postMessage(channel="payments-alerts", text="to payments")
    client.chat_postMessage(channel="U0BOB", text="to bob")
    control.inject_faults(5, "500")
    assert control.stats()["pending_faults"] == 5

    control.reset()
    assert control.messages() == []
    assert control.pending_faults() == []
    assert control.stats()["calls"] == 0
    assert client.chat_postMessage(channel="#payments-alerts", text="again")["ok"] is True
    assert client.users_lookupByEmail(email="BOB@example.com")["user"]["id"] == "U0BOB"


def test_seed_file(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "users": [{"id": "U0CAROL", "email": "carol@example.com", "name": "Carol"}],
                "channels": [{"id": "C0SEEDED", "name": "seeded"}],
            }
        )
    )
    with SandboxServer(token=TOKEN, seed_path=seed) as server:
        client = WebClient(token=TOKEN, base_url=server.url, timeout=5)
        assert client.chat_postMessage(channel="#seeded", text="x")["channel"] == "C0SEEDED"
        assert client.chat_postMessage(channel="U0CAROL", text="x")["channel"].startswith("D")
        assert client.chat_postMessage(channel="#alerts-unrouted", text="x")["ok"] is True


def test_page_escapes_untrusted_text(sandbox: SandboxServer, client: WebClient) -> None:
    client.chat_postMessage(channel="#alerts-ops", text="<script>alert(1)</script> <!channel>")
    client.chat_postMessage(
        channel="#alerts-ops", text='&lt;img src=x onerror="alert(4)"&gt; &amp;'
    )
    client.chat_postMessage(
        channel=ALICE["id"],
        text="fallback",
        blocks=[
            header("<b>Disk full</b>"),
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*db-1* `code` <https://ex.com/a?b=1|runbook>"},
                "fields": [{"type": "mrkdwn", "text": "<javascript:alert(2)|click>"}],
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "_source_ topic-1"}]},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open console"},
                        "url": "https://console.example.com/x",
                    },
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Evil"},
                        "url": "javascript:alert(3)",
                    },
                ],
            },
        ],
    )
    with urllib.request.urlopen(sandbox.root_url, timeout=5) as response:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        page = response.read().decode("utf-8")

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<!channel>" not in page
    assert "&lt;!channel&gt;" in page
    assert "<img" not in page
    assert "&lt;img src=x onerror=&quot;alert(4)&quot;&gt; &amp;amp;" not in page
    assert "&lt;img src=x onerror=&quot;alert(4)&quot;&gt; &amp;" in page
    assert "<b>Disk full</b>" not in page
    assert "&lt;b&gt;Disk full&lt;/b&gt;" in page
    assert "javascript:" not in page.replace("&lt;javascript:alert(2)|click&gt;", "")
    assert '<a href="https://ex.com/a?b=1"' in page
    assert ">runbook</a>" in page
    assert "<b>db-1</b>" in page
    assert "<code>code</code>" in page
    assert "<i>source</i>" in page
    assert 'href="https://console.example.com/x"' in page
    assert "#alerts-ops" in page
    assert "Alice Smith" in page
    assert 'http-equiv="refresh" content="2"' in page
    # Newest conversation first: the DM was posted last.
    assert page.index("Alice Smith") < page.index("#alerts-ops")


# -- as a process ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_runs_as_a_module_subprocess(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"users": [ALICE], "channels": []}))
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "alert_platform.local.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--seed",
        str(seed),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        control = SandboxControl(f"http://127.0.0.1:{port}/api/")
        control.wait_ready(timeout=15)
        client = WebClient(token=TOKEN, base_url=f"http://127.0.0.1:{port}/api/", timeout=5)
        assert client.chat_postMessage(channel=ALICE["id"], text="hello")["ok"] is True
        assert [m["text"] for m in control.messages()] == ["hello"]
    finally:
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}/api/" in stderr
    assert not SandboxControl(f"http://127.0.0.1:{port}/").health()


def test_page_renders_date_tokens_by_their_fallback_text() -> None:
    from alert_platform.local.sandbox.page import mrkdwn_to_html

    html = mrkdwn_to_html("at <!date^1700000000^{date_short} {time}|2023-11-14T22:13:20Z>")
    assert "2023-11-14T22:13:20Z</time>" in html
    assert "&lt;!date" not in html and "<!date" not in html
