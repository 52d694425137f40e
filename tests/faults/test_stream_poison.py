"""Stream mode: poison records and an unassigned org never stall a stream.

An enrichment worker and a delivery worker run in threads. Between two runs of ordinary
provisioning failures go: source records that are not JSON, a JSON array, an event whose fields
have the wrong types and a tombstone; ``slack-messages`` records written by someone else that
are not JSON or have the wrong types; and a provisioning failure of an org nobody is assigned
to. Each poison record must be dead-lettered with a reason (``alerts-dlq`` headers,
``slack-messages-dlq`` values), the unassigned org's event filtered with its reason (as
``explain`` tells it, from the stream's run-index row), no batch may fail (a failed batch is
retried, which would stall its partition), and the ordinary events after the poison must still
arrive within seconds, each exactly once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from itertools import groupby

import pytest

from alert_platform import topics
from alert_platform.explain.explainer import Explainer
from alert_platform.local.hostile import hostile_cases, hostile_lookups, normal_cases
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.stream.names import DELIVERY_STREAM
from tests.faults.harness import (
    EVENT_TYPE,
    burst,
    connector_failure_event,
    fault_orgs,
    read_topic,
    wait_for,
)
from tests.faults.results import record, tally
from tests.faults.stream_procs import arrivals, produce_to, seed_orgs
from tests.integration.stream_helpers import workers

pytestmark = [pytest.mark.integration]

ORGS = fault_orgs("spois", 5)
SOURCE = topics.NOTIFICATIONS
GOOD = 20  # before and after the poison each
ARRIVAL_BOUND_S = 5.0


def _poison_sources(tag: str) -> list[tuple[bytes | None, bytes | None]]:
    wrong_types = {
        "id": 17,
        "type": EVENT_TYPE,
        "time": 1_796_000_000,
        "data": json.dumps(
            {
                "labels": {
                    "connector_old_status": "Provisioning",
                    "connector_new_status": ["Failed"],
                    "org_id": 7,
                    "env_id": None,
                    "connector_id": {"id": 1},
                    "connector_name": 3.5,
                }
            }
        ),
    }
    data_not_text = {"id": "x", "type": EVENT_TYPE, "time": "2026-12-04T10:00:00Z", "data": 42}
    return [
        (f"{tag}-notjson".encode(), b"\xff\xfe{not json"),
        (f"{tag}-array".encode(), b"[1, 2, 3]"),
        (f"{tag}-types".encode(), json.dumps(wrong_types).encode()),
        (f"{tag}-data".encode(), json.dumps(data_not_text).encode()),
        (f"{tag}-tombstone".encode(), None),
    ]


def _poison_messages(tag: str) -> list[tuple[bytes | None, bytes | None]]:
    wrong_types = {"alert_id": 42, "channel_id": ["C1"], "text": 5, "event_time": "yesterday"}
    return [
        (f"{tag}-msg-notjson".encode(), b'{"alert_id": oops'),
        (f"{tag}-msg-types".encode(), json.dumps(wrong_types).encode()),
    ]


def test_poison_records_and_an_unassigned_org_do_not_stall_the_streams(
    flow_settings: Settings, sandbox: SandboxControl
) -> None:
    started = time.monotonic()
    tag = f"p{uuid.uuid4().hex[:6]}"
    settings = flow_settings.with_overrides(
        slack_channel_rate_per_s=1000, slack_channel_burst=1000, stream_group_prefix=f"f-{tag}"
    )
    seed_orgs(settings, sandbox, ORGS)
    before = burst(ORGS, GOOD, tag=f"{tag}a", seed=1, provisioning_share=1.0)
    after = burst(ORGS, GOOD, tag=f"{tag}b", seed=2, provisioning_share=1.0)
    unassigned_org = f"{tag}-nobody"
    unassigned = connector_failure_event(unassigned_org, f"lcc-{tag}-u")
    sources = _poison_sources(tag)
    messages = _poison_messages(tag)

    with workers(settings, SOURCE, DELIVERY_STREAM) as running:
        produce_to(settings, SOURCE, before.events)
        produce_to(settings, SOURCE, sources)
        produce_to(settings, DELIVERY_STREAM, messages)
        produce_to(settings, SOURCE, [(unassigned_org.encode(), json.dumps(unassigned).encode())])
        sent = time.time()
        produce_to(settings, SOURCE, after.events)
        expected = (before + after).expected
        wait_for(lambda: expected <= set(arrivals(sandbox)), 20, "the alerts around the poison")
        time.sleep(1)  # a late duplicate, a late post of anything else
        seen = arrivals(sandbox)
        failures = {w.worker.stream: w.worker.loop.stats.failures for w in running}

    posted = [alert_id for alert_id, times in seen.items() for _ in times]
    figures = tally(expected, posted)
    latest = max(max(seen[a]) for a in after.expected) - sent
    ours = [r for r in read_topic(settings, topics.ALERTS_DLQ)
            if (r.key or b"").startswith(tag.encode())]  # fmt: skip
    reasons = {r.key: dict(r.headers) for r in ours}
    message_dlq = [
        json.loads(r.value or b"{}") for r in read_topic(settings, topics.SLACK_MESSAGES_DLQ)
    ]
    message_errors = {d.get("position"): d.get("error") for d in message_dlq}
    mine = {key for key, _value in sources} | {unassigned_org.encode()}
    positions = {r.key: (r.partition, r.offset) for r in read_topic(settings, SOURCE)
                 if r.key in mine}  # fmt: skip
    with Explainer(settings) as explainer:
        explained = {key: explainer.explain_event(SOURCE, *at)[0] for key, at in positions.items()}
    verdicts = {key.decode(): e.outcome for key, e in explained.items()}
    record(
        "stream: poison records and an unassigned org",
        trials=len(sources) + len(messages) + 1,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(ours) + len(message_dlq),
        notes=(
            f"{len(sources)} poison source records (not JSON, array, wrong types, data not text, "
            f"tombstone), {len(messages)} poison slack-messages, 1 unassigned org; verdicts "
            f"{dict(Counter(verdicts.values()))}; failed batches {failures}; the alerts after "
            f"them {latest:.2f} s after produce; "
            f"{time.monotonic() - started:.0f} s"
        ),
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert failures == {SOURCE: 0, DELIVERY_STREAM: 0}, "a batch failed: the stream stalled"
    assert latest < ARRIVAL_BOUND_S
    assert verdicts == {
        f"{tag}-notjson": "dead_lettered",
        f"{tag}-array": "dead_lettered",
        f"{tag}-types": "dead_lettered",
        f"{tag}-tombstone": "dead_lettered",
        f"{tag}-data": "filtered_out",  # no labels: not a provisioning failure
        unassigned_org: "unmatched",
    }
    assert sorted(reasons) == sorted(
        k for k, e in explained.items() if e.outcome == "dead_lettered"
    )
    for key, headers in reasons.items():
        assert headers.get("error") and headers.get("error_stage"), (key, headers)
        assert headers["pipeline"] == b"connector_failure", (key, headers)
    assert len(message_dlq) == len(messages), message_dlq
    assert all(error for error in message_errors.values()), message_errors
    for key, explanation in explained.items():  # each with its reason, seen by the stream
        assert explanation.reason, (key, explanation)
        runs = explanation.enrichment_runs
        assert any(run.run_id.startswith("stream:") for run in runs), (key, runs)
    nobody = explained[unassigned_org.encode()].reason
    assert unassigned_org in nobody and "csdr_assignments" in nobody, nobody


MEMBER_EMAIL, MEMBER_ID = "grace.hopper@example.com", "U0DEMO0002"  # a seeded sandbox user


def test_hostile_mix_through_the_streams(flow_settings: Settings, sandbox: SandboxControl) -> None:
    """``alert-platform demo hostile``'s records (the batch path's hostile-mix scenario) through
    the stream workers: every outcome as owed, no failed batch."""
    started = time.monotonic()
    tag = f"hm{uuid.uuid4().hex[:6]}"
    settings = flow_settings.with_overrides(
        slack_channel_rate_per_s=1000, slack_channel_burst=1000, stream_group_prefix=f"f-{tag}"
    )
    lookups = hostile_lookups(tag, MEMBER_EMAIL, MEMBER_ID)
    produce_to(
        settings,
        topics.CSDR_ASSIGNMENT,
        [(r["org_id"].encode(), json.dumps(r).encode()) for r in lookups["assignments"]],
    )
    users = [(r["email"].encode(), json.dumps(r).encode()) for r in lookups["users"]]
    produce_to(settings, topics.SLACK_USERS, users)
    hostile = hostile_cases(tag)
    cases = [*normal_cases(tag, 10), *hostile, *normal_cases(tag, 10, first=10)]
    expected = Counter(c.alert_id for c in cases if c.outcome == "alert")
    with workers(settings, SOURCE, DELIVERY_STREAM) as running:
        for topic, group in groupby(cases, key=lambda c: c.topic):  # in order
            produce_to(settings, topic, [(c.key, c.value) for c in group])
        produced = time.monotonic()
        total = sum(expected.values())
        wait_for(lambda: sum(len(v) for a, v in arrivals(sandbox).items() if a in expected)
                 >= total, 30, "the alerts")  # fmt: skip
        took = time.monotonic() - produced
        time.sleep(1.5)
        seen = arrivals(sandbox)
        failures = {w.worker.stream: w.worker.loop.stats.failures for w in running}
    posted = Counter({a: len(times) for a, times in seen.items() if tag in a})
    lost = sum((expected - posted).values())
    duplicated = sum((posted - expected).values())
    source_dlq = [r for r in read_topic(settings, topics.ALERTS_DLQ)
                  if (r.key or b"").startswith(tag.encode())]  # fmt: skip
    message_dlq = [r for r in read_topic(settings, topics.SLACK_MESSAGES_DLQ)
                   if (r.key or b"").startswith(tag.encode())]  # fmt: skip
    dead_sources = [c for c in hostile if c.outcome == "dlq" and c.topic == SOURCE]
    dead_messages = [c for c in hostile if c.outcome == "dlq" and c.topic == DELIVERY_STREAM]
    record(
        "stream: hostile mix through the workers",
        trials=len(cases),
        alerts_expected=sum(expected.values()),
        delivered_once=sum((expected & posted).values()),
        lost=lost,
        duplicated=duplicated,
        dead_lettered=len(source_dlq) + len(message_dlq),
        notes=(
            f"{len(hostile)} hostile records of alert-platform demo hostile among "
            f"{len(cases) - len(hostile)} ordinary events, all posted {took:.2f} s after "
            f"produce; failed batches {failures}; "
            f"{time.monotonic() - started:.0f} s"
        ),
    )
    assert failures == {SOURCE: 0, DELIVERY_STREAM: 0}
    assert lost == 0 and duplicated == 0, (expected - posted, posted - expected)
    stale = {c.alert_id for c in cases if c.outcome == "stale"}
    assert not stale & set(posted)
    assert len(source_dlq) == len(dead_sources)
    assert len(message_dlq) == len(dead_messages)
