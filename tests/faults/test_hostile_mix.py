"""Hostile records of every kind beside ordinary traffic, through the real Dagster flow.

The tail sensor and its enrichment runs, inline delivery and the ``slack_delivery_tail`` safety
net run in process against a private broker and the Slack sandbox (the flow fixtures), as in
``make dev``: with inline delivery on, and with all delivery left to the safety net. Every tick
must evaluate, every run succeed, every ordinary and every deliverable hostile alert be posted
exactly once, and nothing else be posted. The records are the ones ``alert-platform demo
hostile`` produces (:mod:`alert_platform.local.hostile`).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from dagster import DagsterInstance
from slack_sdk import WebClient

from alert_platform import topics
from alert_platform.local.hostile import hostile_cases, hostile_lookups, normal_cases
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.faults.harness import produce, read_topic
from tests.faults.results import record
from tests.integration.flow_helpers import tick_and_run, tick_delivery

MEMBER_EMAIL, MEMBER_ID = "grace.hopper@example.com", "U0DEMO0002"  # a seeded sandbox user
NORMAL = 20
# Slack refuses messages much past 40 KB; a bounded alert stays far below.
MAX_ALERT_BYTES = 40_000
TICKS = 3


def _channel_names(settings: Settings) -> dict[str, str]:
    client = WebClient(
        token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url
    )
    answer = client.conversations_list(types="public_channel,private_channel", limit=1000)
    return {c["id"]: c["name"] for c in answer["channels"]}


@pytest.mark.integration
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "safety-net-only"])
def test_hostile_records_beside_ordinary_traffic(
    inline: bool,
    platform_env: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = platform_env
    monkeypatch.setenv("ALERT_PLATFORM_INLINE_DELIVERY", "true" if inline else "false")
    tag = f"mix{uuid.uuid4().hex[:6]}"
    lookups = hostile_lookups(tag, MEMBER_EMAIL, MEMBER_ID)
    assignments = [(r["org_id"].encode(), json.dumps(r).encode()) for r in lookups["assignments"]]
    produce(settings, topics.CSDR_ASSIGNMENT, assignments)
    users = [(r["email"].encode(), json.dumps(r).encode()) for r in lookups["users"]]
    produce(settings, topics.SLACK_USERS, users)
    hostile = hostile_cases(tag)
    half = NORMAL // 2
    cases = [*normal_cases(tag, half), *hostile, *normal_cases(tag, half, first=half)]
    for topic in (topics.NOTIFICATIONS, topics.SLACK_MESSAGES):
        produce(settings, topic, [(c.key, c.value) for c in cases if c.topic == topic])

    # As the daemon would: tail ticks with their runs, then the safety net, a few times over.
    cursors: dict[str, str | None] = {"connector_failure_tail": None, "slack_delivery_tail": None}
    failed_runs = 0
    for _ in range(TICKS):
        result, runs = tick_and_run("connector_failure_tail", instance,
                                    cursors["connector_failure_tail"])  # fmt: skip
        cursors["connector_failure_tail"] = result.cursor
        failed_runs += sum(1 for run in runs if not run.success)
        result, runs = tick_delivery(instance, cursors["slack_delivery_tail"],
                                     raise_on_error=False)  # fmt: skip
        cursors["slack_delivery_tail"] = result.cursor
        failed_runs += sum(1 for run in runs if not run.success)

    ours = [m for m in sandbox.messages() if tag in json.dumps(m.get("metadata") or {})]
    posted = Counter(m["metadata"]["event_payload"]["alert_id"] for m in ours)
    expected = Counter(c.alert_id for c in cases if c.outcome == "alert")
    lost = sum((expected - posted).values())
    duplicated = sum((posted - expected).values())
    source_dlq = [r for r in read_topic(settings, topics.ALERTS_DLQ)
                  if (r.key or b"").startswith(tag.encode())]  # fmt: skip
    message_dlq = [r for r in read_topic(settings, topics.SLACK_MESSAGES_DLQ)
                   if (r.key or b"").startswith(tag.encode())]  # fmt: skip
    record(
        f"poison records beside traffic ({'inline' if inline else 'safety net only'})",
        trials=len(cases),
        alerts_expected=sum(expected.values()),
        delivered_once=sum((expected & posted).values()),
        lost=lost,
        duplicated=duplicated,
        dead_lettered=len(source_dlq) + len(message_dlq),
        notes=(
            f"{len(hostile)} hostile records (poison JSON, clocks of year 1/9999/31 days back/2 h "
            f"ahead, a 2-day-old event, colliding ids, a DM to 'general', a 900 KB name, NUL and "
            f"bidi, foreign slack-messages) among {len(cases) - len(hostile)} ordinary events; "
            f"{TICKS} rounds of sensor ticks, {failed_runs} failed runs"
        ),
    )
    assert failed_runs == 0
    assert lost == 0 and duplicated == 0, (expected - posted, posted - expected)
    stale = {c.alert_id for c in cases if c.outcome == "stale"}
    assert not stale & set(posted)

    names = _channel_names(settings)
    for message in ours:
        body = json.dumps(message, ensure_ascii=False)
        assert len(body.encode()) < MAX_ALERT_BYTES, message["metadata"]
        assert "\u202e" not in body and "\x00" not in body
        alert_id = message["metadata"]["event_payload"]["alert_id"]
        if alert_id.startswith(f"{tag}-dm-general"):  # not a user id: the fallback route
            assert names.get(message["channel"]) == settings.slack_fallback_channel.lstrip("#")
    dead_sources = [c for c in hostile if c.outcome == "dlq" and c.topic == topics.NOTIFICATIONS]
    assert len(source_dlq) == len(dead_sources)
    dead_messages = [c for c in hostile if c.outcome == "dlq" and c.topic == topics.SLACK_MESSAGES]
    assert len(message_dlq) == len(dead_messages)
