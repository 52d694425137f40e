"""Stream workers against a broker of the module's own and the Slack sandbox: alerts in well
under a second, exactly once, lookup tables followed, drain on stop."""

from __future__ import annotations

import time

from alert_platform import topics
from alert_platform.local.demo import build_demo_data, produce_events, produce_lookup_tables
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.stream.names import DELIVERY_STREAM
from tests.integration.flow_helpers import expected_alert_ids, posted_alert_ids
from tests.integration.stream_helpers import wait_for, workers


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
