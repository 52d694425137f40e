"""deliver_batch against the real Slack sandbox and real ledgers (SQLite, PostgreSQL).

No Slack mocks: faults, rate limits and token revocation are the sandbox's own. Each test
resets the sandbox and uses fresh channels; it restores the default limit and the token after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from alert_platform.delivery.channels import ChannelResolver
from alert_platform.delivery.deliverer import (
    METADATA_EVENT_TYPE,
    ChannelPacer,
    DeliveryIncompleteError,
    DeliveryReport,
    SlackAuthError,
    deliver_batch,
)
from alert_platform.delivery.ledger import DELIVERED, FAILED_PERMANENT, STALE, DeliveryLedger
from alert_platform.delivery.messages import UNPARSEABLE, OutboundMessage
from alert_platform.kafka.records import SourceRecord
from alert_platform.local.sandbox import SandboxControl
from alert_platform.local.sandbox.state import DEFAULT_BURST, DEFAULT_PER_SECOND
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from tests.faults.harness import CRASH_ENV, with_fault_injection
from tests.postgres import PG_URL, postgres_engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RESPONSE_KEYS = {"response_id", "outcome", "alert_id", "dedup_key", "event_time", "ok",
                 "channel", "ts", "error", "attempts", "slack_date", "delivered_at"}  # fmt: skip


def fast_pacer() -> ChannelPacer:
    """For tests that switch the sandbox limit off: no waiting on our side either."""
    return ChannelPacer(rate=200.0, burst=50)


@pytest.fixture
def sandbox(slack_settings: Settings) -> Iterator[SandboxControl]:
    """The session sandbox, reset, at its default rate limit (not the flow tests' ``sandbox`` of
    tests/integration/conftest.py, which switches the limit off); the token restored after."""
    control = SandboxControl(slack_settings.slack_api_url)
    control.reset()
    control.set_rate_limit(DEFAULT_PER_SECOND, DEFAULT_BURST)
    yield control
    control.revoke_token(False)
    control.set_rate_limit(DEFAULT_PER_SECOND, DEFAULT_BURST)
    control.reset()


@pytest.fixture
def channels(sandbox: SandboxControl) -> list[str]:
    """Four fresh channels registered in the sandbox."""
    stem = uuid.uuid4().hex[:8].upper()
    ids = [f"C{stem}{i}" for i in range(4)]
    for i, channel_id in enumerate(ids):
        sandbox.add_channel(channel_id, f"t-{stem.lower()}-{i}")
    return ids


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    engine = postgres_engine()
    schema = f"delivery_test_{uuid.uuid4().hex[:12]}"
    yield schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _ledger_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    table = f"ledger_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return {"url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "schema": None, "table": table}
    return {"url": PG_URL, "schema": request.getfixturevalue("pg_schema"), "table": table}


def _open(spec: dict, **kwargs: object) -> DeliveryLedger:
    return DeliveryLedger(spec["url"], schema=spec["schema"], table_name=spec["table"], **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def ledger_spec(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """SQLite by default; tests parametrized with ``indirect`` also run on PostgreSQL."""
    return _ledger_spec(getattr(request, "param", "sqlite"), request, tmp_path)


@pytest.fixture
def ledger(ledger_spec: dict) -> Iterator[DeliveryLedger]:
    opened = _open(ledger_spec)
    yield opened
    opened.close()


@pytest.fixture
def users(sandbox: SandboxControl) -> list[str]:
    """Two fresh workspace members (alerts to them go to their DM, ``D`` + the rest)."""
    stem = uuid.uuid4().hex[:8].upper()
    ids = [f"U{stem}{i}" for i in range(2)]
    for i, user_id in enumerate(ids):
        sandbox.add_user(user_id, f"user-{stem.lower()}-{i}@example.com", f"User {stem} {i}")
    return ids


def dm_of(user_id: str) -> str:
    return "D" + user_id[1:]  # the sandbox's DM id for a user


def name_of(channel_id: str) -> str:
    """The name the ``channels`` fixture gave ``C<stem><i>``: ``t-<stem>-<i>``."""
    return f"t-{channel_id[1:-1].lower()}-{channel_id[-1]}"


def make_messages(channels: list[str], per_channel: int, tag: str = "") -> list[OutboundMessage]:
    base = datetime.now(UTC) - timedelta(minutes=1)
    run = tag or uuid.uuid4().hex[:8]
    out = []
    for i in range(per_channel):
        for c, channel in enumerate(channels):
            n = i * len(channels) + c
            out.append(
                OutboundMessage(
                    alert_id=f"test:{run}:{n:03d}",
                    channel_id=channel,
                    text=f"alert {n} & <friends>",
                    event_time=base + timedelta(milliseconds=n),
                    pipeline="test",
                    blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": f"*{n}*"}}],
                    position=f"slack-messages:0:{n}",
                )
            )
    return out


def held(sandbox: SandboxControl) -> Counter[str]:
    """How many times the sandbox holds each alert id (from the message metadata)."""
    counts: Counter[str] = Counter()
    for message in sandbox.messages():
        metadata = message.get("metadata") or {}
        assert metadata.get("event_type") == METADATA_EVENT_TYPE
        counts[metadata["event_payload"]["alert_id"]] += 1
    return counts


def assert_exactly_once(sandbox: SandboxControl, messages: list[OutboundMessage]) -> None:
    counts = held(sandbox)
    expected = {m.alert_id for m in messages}
    assert set(counts) == expected, (expected - set(counts), set(counts) - expected)
    assert {k: n for k, n in counts.items() if n != 1} == {}


# -- the normal path ------------------------------------------------------------------------


@pytest.mark.parametrize("ledger_spec", ["sqlite", "postgres"], indirect=True)
def test_batch_is_delivered_once_and_rerun_posts_nothing(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    messages = make_messages(channels, per_channel=3)
    client = make_web_client(slack_settings, timeout=5)
    records: list[dict] = []
    report = deliver_batch(messages, client, ledger, window=24, on_response=records.append)

    assert report.delivered == len(messages) and report.post_calls == len(messages)
    assert report.dead_letters == [] and report.total_retries == 0
    assert_exactly_once(sandbox, messages)
    by_alert = {m.alert_id: m for m in messages}
    for stored in sandbox.messages():
        payload = stored["metadata"]["event_payload"]
        original = by_alert[payload["alert_id"]]
        assert stored["channel"] == original.channel_id
        assert stored["text"] == original.text and stored["blocks"] == original.blocks
        (row,) = ledger.lookup(original.alert_id)
        assert row.state == DELIVERED and row.ts == stored["ts"] and row.nonce == payload["nonce"]
        assert row.channel == original.channel_id and row.attempts == 1
        assert payload["event_time"].endswith("Z")
    # One slack-responses record per attempt, all ok, with Slack's Date as RFC 3339.
    assert len(records) == len(messages)
    for record in records:
        assert set(record) == RESPONSE_KEYS and record["ok"] and record["attempts"] == 1
        assert record["slack_date"].endswith("Z") and record["delivered_at"].endswith("Z")
        assert record["ts"] and record["error"] is None and record["outcome"] == "ok"
        assert record["dedup_key"] == record["alert_id"]  # built in code: no dedup key given

    # Re-running the same batch (replay, retried run) posts nothing.
    again = deliver_batch(messages, client, ledger, window=24, on_response=records.append)
    assert again.already_delivered == len(messages) and again.delivered == 0
    assert again.post_calls == 0 and len(records) == len(messages)
    assert_exactly_once(sandbox, messages)


def test_paces_each_channel_and_resolves_channel_names(
    slack_settings: Settings, sandbox: SandboxControl, ledger: DeliveryLedger
) -> None:
    # Default sandbox limit (1/s, burst 3), default pacing: no 429, channel names accepted.
    messages = make_messages(["#alerts-ops", "C0UNROUTED"], per_channel=4)
    client = make_web_client(slack_settings, timeout=5)
    report = deliver_batch(messages, client, ledger, window=24, pacer=ChannelPacer())
    assert report.delivered == 8 and report.retries["rate_limited"] == 0
    assert sandbox.stats()["http_429"] == 0
    assert 1.5 < report.elapsed < 6  # 4 per channel at ~1/s after a burst of 2, in parallel
    assert_exactly_once(sandbox, messages)
    assert ledger.lookup(messages[0].alert_id)[0].channel == "C0OPS"  # the id Slack answered


def test_repeat_within_window_is_suppressed_outside_posted(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    client = make_web_client(slack_settings, timeout=5)
    t0 = datetime.now(UTC) - timedelta(hours=5)
    alert_id = f"repeat:{uuid.uuid4().hex[:8]}"

    def event(hours: float) -> OutboundMessage:
        return OutboundMessage(alert_id, channels[0], f"at +{hours}h", t0 + timedelta(hours=hours))

    first = deliver_batch([event(0)], client, ledger, window=1, pacer=fast_pacer())
    assert first.delivered == 1
    within = deliver_batch([event(0.5), event(0)], client, ledger, window=1, pacer=fast_pacer())
    assert (within.suppressed_repeat, within.already_delivered, within.delivered) == (1, 1, 0)
    outside = deliver_batch([event(2)], client, ledger, window=1, pacer=fast_pacer())
    assert outside.delivered == 1
    texts = [m["text"] for m in sandbox.messages(channels[0])]
    assert texts == ["at +0h", "at +2h"]
    assert [r.event_time for r in ledger.lookup(alert_id)] == [
        t0 + timedelta(hours=2),
        t0,
    ]


def test_same_alert_twice_in_one_batch_on_two_channels_posts_once(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    t0 = datetime.now(UTC)
    twins = [OutboundMessage("twin-1", ch, "twin", t0) for ch in channels[:2]]
    report = deliver_batch(
        twins, make_web_client(slack_settings), ledger, window=24, pacer=fast_pacer()
    )
    assert report.delivered == 1 and report.already_delivered == 1
    assert held(sandbox) == Counter({"twin-1": 1})


# -- rate limits and transient failures -----------------------------------------------------


def test_429_bursts_everything_arrives_once(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    # The sandbox allows 2/s per channel with no burst headroom; we pace far too fast on
    # purpose, and 429 faults come on top. Nothing may be lost or duplicated.
    sandbox.set_rate_limit(2.0, 1)
    sandbox.inject_faults(5, "429", methods=["chat.postMessage"])
    messages = make_messages(channels, per_channel=4)
    records: list[dict] = []
    report = deliver_batch(
        messages,
        make_web_client(slack_settings, timeout=5),
        ledger,
        window=24,
        on_response=records.append,
        pacer=ChannelPacer(rate=50.0, burst=10),
    )
    assert report.delivered == len(messages)
    assert report.retries["rate_limited"] >= 5
    assert sandbox.stats()["http_429"] == report.retries["rate_limited"]
    assert report.history_calls == 0  # a 429 posted nothing: no need to look
    assert_exactly_once(sandbox, messages)
    failed = [r for r in records if not r["ok"]]
    assert len(failed) == report.retries["rate_limited"]
    assert {r["error"] for r in failed} == {"ratelimited"} and all(r["slack_date"] for r in failed)


def test_server_errors_and_hangs_are_retried_and_arrive_once(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    post = ["chat.postMessage"]
    sandbox.inject_faults(3, "500", methods=post)
    # 'respond': stored at once, answer held past our timeout (sent but unconfirmed).
    sandbox.inject_faults(2, "hang", hang_seconds=2.0, hang_mode="respond", methods=post)
    # 'close': nothing stored, the connection dropped after a while.
    sandbox.inject_faults(1, "hang", hang_seconds=0.8, hang_mode="close", methods=post)
    sandbox.inject_faults(1, "500", methods=["conversations.history"])
    messages = make_messages(channels, per_channel=3)
    records: list[dict] = []
    report = deliver_batch(
        messages,
        make_web_client(slack_settings, timeout=0.5),
        ledger,
        window=24,
        on_response=records.append,
        pacer=fast_pacer(),
        settle=0.2,
    )
    assert sandbox.pending_faults() == []
    assert report.retries["server_error"] == 4  # 3 posts + 1 history call
    assert report.retries["timeout"] + report.retries["connection"] == 3
    assert report.recovered_uncertain == 2  # the two 'respond' hangs were found in history
    assert report.delivered + report.recovered_uncertain == len(messages)
    assert_exactly_once(sandbox, messages)
    errors = Counter(r["error"] for r in records if not r["ok"])
    assert errors["internal_error"] == 3
    # One record per post call (failed, or ok with Slack's Date); a history find has no Date.
    posts = Counter(r["alert_id"] for r in records if not r["ok"] or r["slack_date"])
    for alert_id in {r["alert_id"] for r in records if not r["ok"]}:
        (row,) = ledger.lookup(alert_id)
        # attempts = post calls (a hang found in history needed only its one post)
        assert row.state == DELIVERED and row.attempts == posts[alert_id]


def test_persistent_server_errors_leave_the_message_for_a_later_run(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    sandbox.inject_faults(2, "500", methods=["chat.postMessage"])
    (message,) = make_messages(channels[:1], per_channel=1)
    client = make_web_client(slack_settings)
    with pytest.raises(DeliveryIncompleteError, match="nothing was dropped") as caught:
        deliver_batch([message], client, ledger, window=24, pacer=fast_pacer(), max_attempts=2)
    assert caught.value.report.unfinished == 1 and caught.value.report.retries["server_error"] == 2
    # A 5xx may have posted: the claim is kept (not released) for the next run to check.
    (row,) = ledger.lookup(message.alert_id)
    assert (row.state, row.attempts) == ("sending", 2)
    assert sandbox.messages() == []
    report = deliver_batch(
        [message], client, ledger, window=24, pacer=fast_pacer(), lease=timedelta(0)
    )
    assert report.delivered == 1 and report.history_calls == 1
    assert ledger.lookup(message.alert_id)[0].attempts == 3
    assert_exactly_once(sandbox, [message])


# -- crash between the Slack call and the ledger write --------------------------------------

_CRASHING_RUN = r"""
import json, sys
from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import message_from_value
from alert_platform.local.profile import local_settings
from alert_platform.slack.client import make_web_client
args = json.loads(sys.argv[1])
spec = args["ledger"]
ledger = DeliveryLedger(spec["url"], schema=spec["schema"], table_name=spec["table"])
settings = local_settings(slack_api_url=args["api_url"])
messages = [message_from_value(v) for v in args["messages"]]
deliver_batch(messages, make_web_client(settings, timeout=5), ledger, window=24,
              pacer=ChannelPacer(rate=200, burst=50))
print("finished without crashing")
"""


def crash_after_posting(
    victim: OutboundMessage, messages: list[OutboundMessage], ledger_spec: dict, api_url: str
) -> subprocess.CompletedProcess[str]:
    """Deliver ``messages`` in a child process that is killed right after Slack accepts
    ``victim``, before the ledger records it; asserts it was killed (SIGKILL)."""
    args = {"ledger": ledger_spec, "api_url": api_url, "messages": [m.to_value() for m in messages]}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_RUN, json.dumps(args)],
        cwd=REPO,
        env=with_fault_injection({**os.environ, CRASH_ENV: victim.alert_id}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


@pytest.mark.parametrize("ledger_spec", ["sqlite", "postgres"], indirect=True)
def test_crash_after_post_before_ledger_write_is_recovered_from_slack(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger_spec: dict
) -> None:
    sandbox.set_rate_limit(None)
    messages = make_messages(channels[:2], per_channel=4)
    victim = messages[4]  # third message of channel 0's lane
    proc = crash_after_posting(victim, messages, ledger_spec, slack_settings.slack_api_url)
    assert "finished" not in proc.stdout
    assert held(sandbox)[victim.alert_id] == 1  # posted ...
    ledger = _open(ledger_spec, lease=timedelta(seconds=1))
    (row,) = ledger.lookup(victim.alert_id)
    assert row.state == "sending" and row.ts is None  # ... but never recorded

    # The re-run waits out the dead run's lease, then finds the post by its nonce.
    records: list[dict] = []
    report = deliver_batch(
        messages,
        make_web_client(slack_settings, timeout=5),
        ledger,
        window=24,
        on_response=records.append,
        pacer=fast_pacer(),
    )
    assert report.recovered_uncertain >= 1 and report.history_calls >= 1
    assert report.posted + report.already_delivered == len(messages)
    assert_exactly_once(sandbox, messages)
    (row,) = ledger.lookup(victim.alert_id)
    stored = [m for m in sandbox.messages() if m["metadata"]["event_payload"]["alert_id"]
              == victim.alert_id]  # fmt: skip
    assert row.state == DELIVERED and row.ts == stored[0]["ts"]
    assert any(r["alert_id"] == victim.alert_id and r["ok"] for r in records)
    ledger.close()


# -- destinations given as a user id or a channel name ---------------------------------------
# conversations.history takes a conversation id only (as in Slack): the deliverer resolves a
# user id (its DM) and a channel name first, records the id, and posts to it.


@pytest.mark.parametrize("destination", ["dm", "fallback_name"])
def test_crash_after_post_to_a_dm_or_a_channel_name_is_recovered_once(
    slack_settings: Settings,
    sandbox: SandboxControl,
    channels: list[str],
    users: list[str],
    ledger_spec: dict,
    destination: str,
) -> None:
    sandbox.set_rate_limit(None)
    lane, conversation = {
        "dm": (users[0], dm_of(users[0])),
        "fallback_name": ("#alerts-unrouted", "C0UNROUTED"),
    }[destination]
    messages = make_messages([lane, channels[0]], per_channel=3)
    victim = messages[2]  # second message of the DM / named lane
    assert victim.channel_id == lane
    crash_after_posting(victim, messages, ledger_spec, slack_settings.slack_api_url)
    assert held(sandbox)[victim.alert_id] == 1
    ledger = _open(ledger_spec, lease=timedelta(seconds=1))
    (row,) = ledger.lookup(victim.alert_id)
    # Never recorded as delivered, but the claim already names the conversation id.
    assert (row.state, row.ts, row.channel) == ("sending", None, conversation)

    # A fresh run in this process (nothing learned from the dead run's posts).
    report = deliver_batch(
        messages, make_web_client(slack_settings, timeout=5), ledger, window=24,
        pacer=fast_pacer(),
    )  # fmt: skip
    # (the other lane may have had a send in flight too when the process was killed)
    assert report.recovered_uncertain >= 1 and report.history_calls >= 1
    assert report.posted + report.already_delivered == len(messages)
    (result,) = [r for r in report.results if r.alert_id == victim.alert_id]
    assert (result.status, result.channel) == ("recovered_uncertain", conversation)
    assert_exactly_once(sandbox, messages)
    assert sandbox.stats()["errors"].get("channel_not_found", 0) == 0
    for message in messages:
        (row,) = ledger.lookup(message.alert_id)
        assert row.state == DELIVERED
        assert row.channel == (conversation if message.channel_id == lane else channels[0])
    assert {m["channel"] for m in sandbox.messages()} == {conversation, channels[0]}
    ledger.close()


def test_unknown_user_or_name_is_dead_lettered_and_the_rest_delivered(
    slack_settings: Settings,
    sandbox: SandboxControl,
    channels: list[str],
    users: list[str],
    ledger: DeliveryLedger,
) -> None:
    sandbox.set_rate_limit(None)
    stem = uuid.uuid4().hex[:8]
    nobody, no_name = f"U0NOBODY{stem.upper()}", f"no-such-{stem}"
    good = make_messages([users[0], "#alerts-ops", name_of(channels[1]), channels[2]], 2)
    t0 = datetime.now(UTC)
    bad = [
        OutboundMessage("dl:user", nobody, "to nobody", t0),
        OutboundMessage("dl:hash-name", f"#{no_name}", "to no channel", t0),
        OutboundMessage("dl:bare-name", no_name, "to no channel either", t0),
    ]
    records: list[dict] = []
    client = make_web_client(slack_settings)
    report = deliver_batch(
        [*bad, *good], client, ledger, window=24, on_response=records.append, pacer=fast_pacer()
    )
    assert report.delivered == len(good) and report.dead_lettered == len(bad)
    assert_exactly_once(sandbox, good)
    letters = {d.alert_id: d for d in report.dead_letters}
    assert {a: d.error for a, d in letters.items()} == dict.fromkeys(
        ["dl:user", "dl:hash-name", "dl:bare-name"], "channel_not_found"
    )
    assert letters["dl:user"].detail == "conversations.open: user_not_found"
    assert letters["dl:hash-name"].detail == f"no channel named #{no_name}"
    assert letters["dl:user"].channel == nobody  # the DLQ shows what the alert was addressed to
    for message in bad:
        (row,) = ledger.lookup(message.alert_id)
        assert (row.state, row.error, row.attempts) == (FAILED_PERMANENT, "channel_not_found", 0)
    failed = {r["alert_id"]: r for r in records if not r["ok"]}
    assert set(failed) == {m.alert_id for m in bad}
    assert {r["error"] for r in failed.values()} == {"channel_not_found"}
    assert report.post_calls == len(good)  # nothing was sent to the unresolvable lanes
    assert report.history_calls == 0

    # Once the member and the channel exist, replaying the range delivers just those.
    sandbox.add_user(nobody, f"nobody-{stem}@example.com", "Nobody")
    sandbox.add_channel(f"C0NOW{stem.upper()}", no_name)
    replay = deliver_batch([*bad, *good], client, ledger, window=24, pacer=fast_pacer())
    assert (replay.delivered, replay.already_delivered) == (len(bad), len(good))
    assert ledger.lookup("dl:user")[0].channel == dm_of(nobody)
    assert ledger.lookup("dl:bare-name")[0].channel == f"C0NOW{stem.upper()}"
    assert_exactly_once(sandbox, [*bad, *good])


def test_names_are_listed_once_per_batch_and_users_opened_once(
    slack_settings: Settings,
    sandbox: SandboxControl,
    channels: list[str],
    users: list[str],
    ledger: DeliveryLedger,
) -> None:
    sandbox.set_rate_limit(None)
    lanes = [
        "#alerts-ops", "alerts-unrouted", f"#{name_of(channels[0])}", name_of(channels[1]),
        channels[2], users[0], users[1],
    ]  # fmt: skip
    expected = ["C0OPS", "C0UNROUTED", channels[0], channels[1], channels[2],
                dm_of(users[0]), dm_of(users[1])]  # fmt: skip
    messages = make_messages(lanes, per_channel=3)
    client = make_web_client(slack_settings, timeout=5)
    report = deliver_batch(messages, client, ledger, window=24, pacer=fast_pacer())
    assert report.delivered == len(messages)
    assert_exactly_once(sandbox, messages)
    calls = sandbox.stats()["calls_by_method"]
    assert calls.get("conversations.list") == 1  # one listing for the four named lanes
    assert calls.get("conversations.open") == 2  # one per user, not per message
    assert report.resolve_calls == 3
    where = dict(zip(lanes, expected, strict=True))
    for message in messages:
        (row,) = ledger.lookup(message.alert_id)
        assert row.channel == where[message.channel_id]  # the id, recorded at claim time
    stored = {m["metadata"]["event_payload"]["alert_id"]: m["channel"] for m in sandbox.messages()}
    assert stored == {m.alert_id: where[m.channel_id] for m in messages}

    # The cache lives for one batch: the next batch lists again (channels may be renamed).
    more = make_messages(lanes[:2], per_channel=1)
    deliver_batch(more, client, ledger, window=24, pacer=fast_pacer())
    assert sandbox.stats()["calls_by_method"]["conversations.list"] == 2


def test_resolver_follows_conversations_list_pages(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str]
) -> None:
    client = make_web_client(slack_settings, timeout=5)

    def call(method: str, **params: object) -> dict:
        return getattr(client, method.replace(".", "_"))(**params).data

    def pages(method: str, **params: object) -> list[dict]:  # slack-sdk's cursor pagination
        return [dict(page.data) for page in getattr(client, method.replace(".", "_"))(**params)]

    resolver = ChannelResolver(call, pages, page_size=2)
    names = resolver.name_map()
    assert names["alerts-unrouted"] == "C0UNROUTED"
    assert all(names[name_of(c)] == c for c in channels)
    pages = sandbox.stats()["calls_by_method"]["conversations.list"]
    assert pages == -(-len(names) // 2) >= 3  # every page, two names each
    assert resolver.resolve(f"#{name_of(channels[3])}") == channels[3]
    assert sandbox.stats()["calls_by_method"]["conversations.list"] == pages  # cached


def test_transient_lookup_failures_are_retried_or_leave_the_lane_for_later(
    slack_settings: Settings,
    sandbox: SandboxControl,
    channels: list[str],
    users: list[str],
    ledger: DeliveryLedger,
) -> None:
    sandbox.set_rate_limit(None)
    sandbox.inject_faults(2, "500", methods=["conversations.list"])
    sandbox.inject_faults(1, "429", methods=["conversations.open"])
    messages = make_messages(["#alerts-ops", users[0], channels[0]], per_channel=2)
    client = make_web_client(slack_settings, timeout=5)
    report = deliver_batch(messages, client, ledger, window=24, pacer=fast_pacer())
    assert report.delivered == len(messages)
    assert (report.retries["server_error"], report.retries["rate_limited"]) == (2, 1)
    assert_exactly_once(sandbox, messages)

    # conversations.open keeps failing: that lane is left (nothing claimed), the rest goes.
    sandbox.reset()
    sandbox.set_rate_limit(None)
    sandbox.inject_faults(2, "500", methods=["conversations.open"])
    later = make_messages([users[1], channels[1]], per_channel=2)
    with pytest.raises(DeliveryIncompleteError) as caught:
        deliver_batch(later, client, ledger, window=24, pacer=fast_pacer(), max_attempts=2)
    left = caught.value.report
    assert (left.delivered, left.unfinished) == (2, 2)
    assert {r.error for r in left.results if r.status == "unfinished"} == {"channel_lookup_failed"}
    assert all(ledger.lookup(m.alert_id) == [] for m in later if m.channel_id == users[1])
    rerun = deliver_batch(later, client, ledger, window=24, pacer=fast_pacer())
    assert (rerun.delivered, rerun.already_delivered) == (2, 2)
    assert_exactly_once(sandbox, later)


def test_revoked_token_during_lookup_stops_before_anything_is_claimed(
    slack_settings: Settings, sandbox: SandboxControl, users: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.revoke_token()
    messages = make_messages(["#alerts-ops", users[0]], per_channel=2)
    with pytest.raises(SlackAuthError) as caught:
        deliver_batch(
            messages, make_web_client(slack_settings), ledger, window=24, pacer=fast_pacer()
        )
    assert caught.value.error == "token_revoked"
    assert caught.value.report.not_attempted == len(messages)
    assert sandbox.messages() == [] and ledger.count_by_state() == {}


# -- permanent failures and auth ------------------------------------------------------------


def test_permanent_failures_are_dead_lettered_and_the_rest_delivered(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    good = make_messages(channels[:2], per_channel=2)
    t0 = datetime.now(UTC)
    missing = OutboundMessage("dl:missing", "C0DOESNOTEXIST", "to nowhere", t0)
    too_long_header = [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}]
    bad_blocks = OutboundMessage("dl:blocks", channels[0], "bad", t0, blocks=too_long_header)
    garbage = SourceRecord("slack-messages", 0, 99, 0, b"dl:garbage", b"{not json")
    records: list[dict] = []
    report = deliver_batch(
        [missing, *good, bad_blocks, garbage],
        make_web_client(slack_settings),
        ledger,
        window=24,
        on_response=records.append,
        pacer=fast_pacer(),
    )
    assert report.delivered == len(good) and report.dead_lettered == 3
    letters = {d.alert_id: d for d in report.dead_letters}
    assert letters["dl:missing"].error == "channel_not_found"
    assert letters["dl:blocks"].error == "invalid_blocks"
    assert letters["dl:garbage"].error == UNPARSEABLE
    assert letters["dl:garbage"].position == "slack-messages:0:99"
    assert json.loads(letters["dl:missing"].dlq_value())["message"]["text"] == "to nowhere"
    assert ledger.lookup("dl:missing")[0].state == FAILED_PERMANENT
    assert ledger.lookup("dl:missing")[0].error == "channel_not_found"
    assert {r["error"] for r in records if not r["ok"]} == {"channel_not_found", "invalid_blocks"}
    assert_exactly_once(sandbox, good)

    # After the channel exists, replaying the range retries only the failed alert.
    sandbox.add_channel("C0DOESNOTEXIST", f"now-exists-{uuid.uuid4().hex[:6]}")
    replay = deliver_batch(
        [missing, *good], make_web_client(slack_settings), ledger, window=24, pacer=fast_pacer()
    )
    assert (replay.delivered, replay.already_delivered) == (1, len(good))
    assert ledger.lookup("dl:missing")[0].state == DELIVERED


def test_revoked_token_stops_loudly_and_releases_claims(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    messages = make_messages(channels, per_channel=5)
    client = make_web_client(slack_settings, timeout=5)
    posted: list[str] = []

    def revoke_after_three(message: OutboundMessage, response: dict) -> None:
        posted.append(message.alert_id)
        if len(posted) == 3:
            sandbox.revoke_token()

    records: list[dict] = []
    with pytest.raises(SlackAuthError) as caught:
        deliver_batch(
            messages,
            client,
            ledger,
            window=24,
            on_response=records.append,
            pacer=ChannelPacer(rate=20.0, burst=1),
            after_post=revoke_after_three,
        )
    error = caught.value
    assert error.error == "token_revoked"
    assert "SLACK_BOT_TOKEN" in str(error)
    assert slack_settings.slack_bot_token.get_secret_value() not in str(error)
    report = error.report
    in_slack = held(sandbox)
    # Nothing was posted after the revocation; everything posted is recorded ...
    assert sum(in_slack.values()) == report.posted == len(posted) >= 3
    assert all(ledger.lookup(a)[0].state == DELIVERED for a in in_slack)
    # ... and nothing else holds a claim: the next run can deliver all of it.
    unposted = [m for m in messages if m.alert_id not in in_slack]
    assert unposted and all(ledger.lookup(m.alert_id) == [] for m in unposted)
    assert report.released + report.not_attempted == len(unposted)
    assert any(r["error"] == "token_revoked" for r in records)

    sandbox.revoke_token(False)  # the token is fixed; the whole range is retried
    rerun = deliver_batch(messages, client, ledger, window=24, pacer=fast_pacer())
    assert rerun.delivered == len(unposted) and rerun.already_delivered == len(in_slack)
    assert_exactly_once(sandbox, messages)


def test_wrong_token_posts_nothing_and_names_the_variable(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    secret = "xoxb-not-the-right-token-123"
    client = make_web_client(slack_settings.with_overrides(slack_bot_token=secret))
    messages = make_messages(channels, per_channel=2)
    with pytest.raises(SlackAuthError, match="SLACK_BOT_TOKEN") as caught:
        deliver_batch(messages, client, ledger, window=24, pacer=fast_pacer())
    assert caught.value.error == "invalid_auth"
    assert secret not in str(caught.value) and secret not in repr(caught.value.report)
    assert sandbox.messages() == []
    assert ledger.count_by_state() == {}


# -- one alert's ledger failure, stale alerts, colliding readable ids -------------------------


def poison_triggers(ledger: DeliveryLedger, claim_suffix: str, record_suffix: str) -> None:
    """SQLite triggers that make one alert's claim (insert) and another's ``mark_delivered``
    (update to 'delivered') fail, as a bad value or a broken row would, for that alert only."""
    table = ledger.table.name
    with ledger.transaction() as conn:
        conn.exec_driver_sql(
            f'CREATE TRIGGER poison_claim BEFORE INSERT ON "{table}" '
            f"WHEN NEW.alert_id LIKE '%{claim_suffix}' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned claim'); END"
        )
        conn.exec_driver_sql(
            f'CREATE TRIGGER poison_record BEFORE UPDATE ON "{table}" '
            f"WHEN NEW.state = 'delivered' AND NEW.alert_id LIKE '%{record_suffix}' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned record'); END"
        )


def test_one_alerts_failing_ledger_statement_leaves_every_other_alert_alone(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    messages = make_messages(channels, per_channel=4)
    # Claims of a lane are grouped (fast pacing: claim-ahead) with other lanes' calls in one
    # SQLite transaction: before, one failing statement voided them all.
    claim_victim = replace(messages[5], alert_id=messages[5].alert_id + ":poison-claim")
    record_victim = replace(messages[10], alert_id=messages[10].alert_id + ":poison-record")
    messages[5], messages[10] = claim_victim, record_victim
    poison_triggers(ledger, ":poison-claim", ":poison-record")
    client = make_web_client(slack_settings, timeout=5)
    records: list[dict] = []
    report = deliver_batch(
        messages, client, ledger, window=24, on_response=records.append, pacer=fast_pacer()
    )

    assert report.dead_lettered == 1 and report.delivered == len(messages) - 1
    (letter,) = report.dead_letters
    assert letter.alert_id == claim_victim.alert_id and letter.error == "delivery_error"
    assert "poisoned claim" in letter.detail and letter.detail.startswith("claim:")
    failed = [r for r in records if r["alert_id"] == claim_victim.alert_id]
    assert [(r["outcome"], r["error"]) for r in failed] == [("failed", "delivery_error")]
    others = [m for m in messages if m is not claim_victim]
    assert_exactly_once(sandbox, others)
    for message in others:
        (row,) = ledger.lookup(message.alert_id)
        expected = "sending" if message is record_victim else DELIVERED  # posted, unrecorded
        assert row.state == expected, (message.alert_id, row.state)
    assert ledger.lookup(claim_victim.alert_id) == []

    # The cause fixed, a re-run delivers the dead letter and finds the unrecorded post.
    with ledger.transaction() as conn:
        conn.exec_driver_sql("DROP TRIGGER poison_claim")
        conn.exec_driver_sql("DROP TRIGGER poison_record")
    rerun = deliver_batch(
        messages, client, ledger, window=24, pacer=fast_pacer(), lease=timedelta(0)
    )
    assert (rerun.delivered, rerun.recovered_uncertain) == (1, 1)
    assert rerun.already_delivered == len(messages) - 2
    assert_exactly_once(sandbox, messages)
    assert all(ledger.lookup(m.alert_id)[0].state == DELIVERED for m in messages)


@pytest.mark.parametrize("ledger_spec", ["sqlite", "postgres"], indirect=True)
def test_stale_alerts_are_not_posted_until_an_explicit_backfill(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:8]
    fresh = OutboundMessage(f"age:{run}:fresh", channels[0], "fresh", now - timedelta(hours=23))
    old = OutboundMessage(f"age:{run}:old", channels[0], "old", now - timedelta(hours=25))
    client = make_web_client(slack_settings, timeout=5)
    records: list[dict] = []

    def live() -> DeliveryReport:
        return deliver_batch([fresh, old], client, ledger, window=1, on_response=records.append,
                             pacer=fast_pacer(), max_age=timedelta(hours=24))  # fmt: skip

    report = live()
    assert (report.delivered, report.stale) == (1, 1) and report.summary()["stale"] == 1
    assert held(sandbox) == Counter({fresh.alert_id: 1})
    (stale_record,) = [r for r in records if r["alert_id"] == old.alert_id]
    assert stale_record["outcome"] == "stale" and not stale_record["ok"]
    assert (stale_record["error"], stale_record["attempts"]) == ("stale", 0)
    assert [r.state for r in ledger.lookup(old.alert_id)] == [STALE]

    again = live()  # a re-run: still stale, still one row, nothing posted
    assert (again.already_delivered, again.stale, again.post_calls) == (1, 1, 0)
    assert [r.state for r in ledger.lookup(old.alert_id)] == [STALE]

    backfill = deliver_batch([fresh, old], client, ledger, window=1, pacer=fast_pacer(),
                             max_age=timedelta(hours=24), allow_stale=True)  # fmt: skip
    assert (backfill.delivered, backfill.stale, backfill.already_delivered) == (1, 0, 1)
    assert_exactly_once(sandbox, [fresh, old])
    assert [r.state for r in ledger.lookup(old.alert_id)] == [DELIVERED]
    after = live()
    assert (after.already_delivered, after.stale, after.post_calls) == (2, 0, 0)


@pytest.mark.parametrize("ledger_spec", ["sqlite", "postgres"], indirect=True)
def test_alerts_with_the_same_readable_id_and_different_keys_are_both_posted(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    readable = f"acme-prod-env-1-{uuid.uuid4().hex[:6]}-connector-failure"
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    # org acme-prod / env env-1 and org acme / env prod-env-1: one readable id, two keys.
    pair = [
        OutboundMessage(readable, channels[0], "acme-prod", t0, dedup_key="connector_failure:1a"),
        OutboundMessage(readable, channels[1], "acme", t0, dedup_key="connector_failure:2b"),
    ]
    client = make_web_client(slack_settings, timeout=5)
    report = deliver_batch(pair, client, ledger, window=24, pacer=fast_pacer())
    assert report.delivered == 2 and report.suppressed_repeat == report.already_delivered == 0
    assert sorted(m["text"] for m in sandbox.messages()) == ["acme", "acme-prod"]
    rows = ledger.lookup(readable)
    assert sorted(r.dedup_key for r in rows) == ["connector_failure:1a", "connector_failure:2b"]
    assert {r.state for r in rows} == {DELIVERED}
    again = deliver_batch(pair, client, ledger, window=24, pacer=fast_pacer())
    assert again.already_delivered == 2 and again.post_calls == 0


def test_a_payload_that_cannot_be_encoded_is_dead_lettered_and_the_lane_goes_on(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    sandbox.set_rate_limit(None)
    deep: dict = {"type": "section"}
    for _ in range(5_000):  # deeper than any JSON encoder recurses
        deep = {"type": "section", "nested": deep}
    messages = make_messages(channels[:1], per_channel=3)
    messages[1] = replace(messages[1], blocks=[deep])
    report = deliver_batch(
        messages, make_web_client(slack_settings, timeout=5), ledger, window=24,
        pacer=fast_pacer(),
    )  # fmt: skip
    assert (report.delivered, report.dead_lettered, report.unfinished) == (2, 1, 0)
    (letter,) = report.dead_letters
    assert letter.alert_id == messages[1].alert_id and "RecursionError" in letter.detail
    assert_exactly_once(sandbox, [messages[0], messages[2]])
    (row,) = ledger.lookup(messages[1].alert_id)
    assert row.state == FAILED_PERMANENT and "RecursionError" in (row.error or "")


@pytest.mark.parametrize("ledger_spec", ["sqlite", "postgres"], indirect=True)
def test_each_outcome_is_reported_before_the_ledger_makes_it_final(
    slack_settings: Settings, sandbox: SandboxControl, channels: list[str], ledger: DeliveryLedger
) -> None:
    # The runner stores each record durably in its callback: the ledger must not hold an
    # outcome as final before the callback has returned.
    sandbox.set_rate_limit(None)
    messages = make_messages(channels, per_channel=2)
    old = OutboundMessage(f"order:{uuid.uuid4().hex[:6]}", channels[0], "old",
                          datetime.now(UTC) - timedelta(days=3))  # fmt: skip
    seen: list[tuple[str, list[str]]] = []

    def on_response(record: dict) -> None:
        seen.append((record["outcome"], [r.state for r in ledger.lookup(record["alert_id"])]))

    report = deliver_batch([*messages, old], make_web_client(slack_settings, timeout=5), ledger,
                           window=24, on_response=on_response, pacer=fast_pacer(),
                           max_age=timedelta(hours=24))  # fmt: skip
    assert (report.delivered, report.stale) == (len(messages), 1)
    assert sorted(seen) == sorted([("ok", ["sending"])] * len(messages) + [("stale", [])])
    assert all(ledger.lookup(m.alert_id)[0].state == DELIVERED for m in messages)
    assert ledger.lookup(old.alert_id)[0].state == STALE
