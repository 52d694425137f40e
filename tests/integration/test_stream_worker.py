"""Stream workers against a broker of the module's own and the Slack sandbox: alerts in well
under a second, exactly once, lookup tables followed, drain on stop."""

from __future__ import annotations

import json
import time

from alert_platform import topics
from alert_platform.kafka.clients import make_producer
from alert_platform.local.demo import build_demo_data, produce_events, produce_lookup_tables
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from alert_platform.stream.names import DELIVERY_STREAM
from tests.integration.flow_helpers import (
    connector_failure_alert_id,
    connector_status_event,
    expected_alert_ids,
    posted_alert_ids,
)
from tests.integration.stream_helpers import start_worker, wait_for, workers


def test_events_become_slack_posts_within_a_second_exactly_once(
    flow_settings: Settings, sandbox: SandboxControl
) -> None:
    demo = build_demo_data(event_count=30, seed=21)
    produce_lookup_tables(flow_settings, demo)
    expected = expected_alert_ids(demo, demo.events)
    assert len(expected) >= 5
    settings = flow_settings.with_overrides(slack_channel_rate_per_s=1000, slack_channel_burst=1000)
    with workers(settings, topics.NOTIFICATIONS, DELIVERY_STREAM):
        started = time.monotonic()
        produce_events(flow_settings, demo.events)
        wait_for(lambda: set(posted_alert_ids(sandbox)) >= expected, 10, "the alerts in Slack")
        took = time.monotonic() - started
    assert posted_alert_ids(sandbox) == sorted(expected)
    assert took < 2.0, f"{len(expected)} alerts took {took:.2f} s"
    # What the stream read is in the run index (explain, backfills), under the worker's id.
    index = RunIndex(settings.effective_ledger_url)
    try:
        streamed = [
            r for r in index.ranges_of(topics.NOTIFICATIONS) if r.run_id.startswith("stream:")
        ]
    finally:
        index.close()
    assert sum(r.records for r in streamed) == len(demo.events)
    assert sum(r.alerts for r in streamed) == len(expected)


def _fast(settings: Settings) -> Settings:
    return settings.with_overrides(slack_channel_rate_per_s=1000, slack_channel_burst=1000)


def test_an_assignment_written_before_an_event_is_joined_by_it(
    flow_settings: Settings, sandbox: SandboxControl
) -> None:
    """GlobalKTable semantics: the table is followed by the worker, not reloaded per run."""
    settings = _fast(flow_settings)
    demo = build_demo_data(event_count=1, seed=5)
    produce_lookup_tables(settings, demo)
    with workers(settings, topics.NOTIFICATIONS, DELIVERY_STREAM):
        for n in range(5):
            org_id = f"org-stream-late-{n}"
            event, labels = connector_status_event(org_id, n, tag=f"late{n}")
            produce_events(settings, [(org_id, event)])  # before its assignment: no alert
            time.sleep(0.3)
            producer = make_producer(settings)
            row = {"org_id": org_id, "csdr_email": "Ada.Lovelace@example.com",
                   "csdr_name": "Ada", "account_name": f"Late {n}"}  # fmt: skip
            producer.produce(
                topics.CSDR_ASSIGNMENT, key=org_id.encode(), value=json.dumps(row).encode()
            )
            producer.flush(10)  # acknowledged: every event produced after this is joined
            event2, labels2 = connector_status_event(org_id, n + 100, tag=f"late{n}b")
            produce_events(settings, [(org_id, event2)])
            alert_id = connector_failure_alert_id(org_id, labels2)
            wait_for(lambda a=alert_id: a in posted_alert_ids(sandbox), 5, f"alert {alert_id}")
            assert connector_failure_alert_id(org_id, labels) not in posted_alert_ids(sandbox)
    message = next(m for m in sandbox.messages()
                   if m["metadata"]["event_payload"]["alert_id"] == alert_id)  # fmt: skip
    assert message["channel"] == "D0DEMO0001"  # the DM of U0DEMO0001: joined by e-mail


def test_a_drained_worker_commits_and_a_restart_posts_nothing_twice(
    flow_settings: Settings, sandbox: SandboxControl
) -> None:
    settings = _fast(flow_settings)
    demo = build_demo_data(event_count=40, seed=33)
    produce_lookup_tables(settings, demo)
    expected = expected_alert_ids(demo, demo.events)
    enrich = start_worker(settings, topics.NOTIFICATIONS)
    deliver = start_worker(settings, DELIVERY_STREAM)
    produce_events(settings, demo.events)
    wait_for(lambda: set(posted_alert_ids(sandbox)) >= expected, 10, "the alerts in Slack")
    assert enrich.halt() < 10 and deliver.halt() < 10
    assert enrich.errors == [] and deliver.errors == []
    # Committed what it did: restarted workers find nothing left (no re-read, no repost).
    with workers(settings, topics.NOTIFICATIONS, DELIVERY_STREAM) as again:
        time.sleep(1.5)
        assert [w.worker.loop.stats.records for w in again] == [0, 0]
    assert posted_alert_ids(sandbox) == sorted(expected)


def test_slack_down_stalls_the_delivery_stream_then_it_delivers_once(
    flow_settings: Settings, sandbox: SandboxControl
) -> None:
    """A failing batch is not committed: it is retried after a back-off, never lost."""
    settings = _fast(flow_settings).with_overrides(delivery_lease_s=15, slack_call_timeout_s=5)
    demo = build_demo_data(event_count=20, seed=44)
    produce_lookup_tables(settings, demo)
    expected = expected_alert_ids(demo, demo.events)
    sandbox.inject_faults(400, "500", methods=["chat.postMessage"])
    with workers(settings, topics.NOTIFICATIONS, DELIVERY_STREAM) as (_enrich, deliver):
        produce_events(settings, demo.events)
        wait_for(lambda: deliver.worker.loop.stats.failures > 0, 20, "a failed delivery batch")
        assert posted_alert_ids(sandbox) == []
        sandbox.reset()
        sandbox.set_rate_limit(per_second=0, burst=0)
        wait_for(lambda: set(posted_alert_ids(sandbox)) >= expected, 40, "the alerts in Slack")
    assert posted_alert_ids(sandbox) == sorted(expected)


def test_the_dev_command_sees_when_the_stream_groups_are_up(flow_settings: Settings) -> None:
    from alert_platform.local.dev import stream_groups_ready

    before = stream_groups_ready(flow_settings)
    with workers(flow_settings, DELIVERY_STREAM):
        wait_for(lambda: stream_groups_ready(flow_settings)[DELIVERY_STREAM], 10, "the group")
        assert not all(stream_groups_ready(flow_settings).values())  # the source streams lack one
    assert before[DELIVERY_STREAM] is False


def test_a_new_group_commits_and_records_where_it_starts_at_once(
    flow_settings: Settings,
) -> None:
    """The catch-up's trust in the group starts there, not after its first batch."""
    from alert_platform.kafka.clients import make_admin, make_consumer
    from alert_platform.kafka.groups import committed_offsets
    from alert_platform.kafka.offsets import probe_end_offsets
    from alert_platform.stream.names import stream_group
    from alert_platform.stream.starts import StreamStarts

    settings = flow_settings.with_overrides(stream_group_prefix="fresh-group-test")
    produce_events(settings, build_demo_data(event_count=12, seed=3).events)  # before the worker
    reader = make_consumer(settings)
    try:
        ends = probe_end_offsets(reader, topics.NOTIFICATIONS)
    finally:
        reader.close()
    group = stream_group(settings.stream_group_prefix, topics.NOTIFICATIONS)
    with workers(settings, topics.NOTIFICATIONS):  # returns once assigned
        with StreamStarts(settings.effective_ledger_url) as table:
            starts = table.starts(group, topics.NOTIFICATIONS)
        committed = committed_offsets(make_admin(settings), group, topics.NOTIFICATIONS, ends)
    assert set(starts) == set(ends) == set(committed)
    # at the end (the local broker's is inexact: up to its last batch lower), and committed
    # there before the first batch (or past it, when that batch was done already)
    assert all(0 <= starts[p] <= committed[p] <= ends[p] for p in ends), (starts, ends, committed)
    assert any(starts[p] > 0 for p in ends)  # not the beginning: the end
