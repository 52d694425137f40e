"""Fault row "ops messages": a stuck failing range is retried again and again; the ops channel
gets exactly one post, then one reminder once the reminder interval (shortened to its minimum,
1 minute, for the test) has passed, never two posts for one failure event.

The failures are real failed Dagster runs carrying the tail sensor's range tag
(``alert-platform/range-0``, ``#retryN`` on re-launches), the run-failure sensor is the
platform's own (each failure evaluated twice, as a re-evaluated tick would), the database is a
real SQLite ledger file and the posts are counted in the Slack sandbox.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance

from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.ops_notices import OpsNotifier
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from assets.resources import PlatformResource, SlackDeliveryResource
from tests.faults.results import record, tally
from tests.integration.ops_state_helpers import channel_posts, evaluate_failure_sensor, fail_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPS = "#alerts-ops"
REMINDER_S = 60.0  # ALERT_OPS_REMINDER_MINUTES=1, the smallest allowed
RETRY_EVERY_S = 6.0
RANGE_KEY = "notifications:0:1200-1400@5eed0001"


def test_stuck_range_posts_once_then_one_reminder(
    flow_settings: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("ALERT_OPS_CHANNEL", OPS)
    monkeypatch.setenv("ALERT_OPS_REMINDER_MINUTES", "1")
    resources = {
        "platform": PlatformResource(ledger_url=url),
        "slack": SlackDeliveryResource(
            token=flow_settings.slack_bot_token.get_secret_value(),
            base_url=flow_settings.slack_api_url,
        ),
    }
    failures = 0

    def fail_again() -> None:
        nonlocal failures
        suffix = f"#retry{failures}" if failures else ""
        run = fail_run(instance, {"alert-platform/range-0": RANGE_KEY + suffix})
        evaluate_failure_sensor(instance, run, resources)
        evaluate_failure_sensor(instance, run, resources)  # the same event, handed over again
        failures += 1

    fail_again()
    posted_by = time.monotonic()  # the first post happened before this
    first_posts = len(channel_posts(sandbox, OPS))
    # Retries while the reminder interval runs: no post; the last one may be past it.
    while time.monotonic() - posted_by < REMINDER_S + 1:
        time.sleep(RETRY_EVERY_S)
        fail_again()
    # Past the interval: one reminder at most (the loop's last retry may have posted it), then
    # quiet again.
    for _ in range(3):
        fail_again()
    posts = channel_posts(sandbox, OPS)

    labels = ["reminder" if text.startswith(":repeat: Reminder") else "notice" for text in posts]
    counts = tally(["notice", "reminder"], labels)
    with OpsNotifier(make_web_client(flow_settings), OPS, url, timedelta(minutes=1)) as ops:
        notice = ops.get(f"run-failure:stuck_range_job:{RANGE_KEY}")
    assert notice is not None
    failed_posts = 1 if notice.error else 0
    record(
        "ops messages",
        trials=failures,
        alerts_expected=counts["alerts_expected"],
        delivered_once=counts["delivered_once"],
        lost=counts["lost"],
        duplicated=counts["duplicated"] + counts["unexpected"],
        dead_lettered=failed_posts,
        notes=(
            f"one stuck range failing {failures} times (#retry0..#retry{failures - 1}), each "
            f"failure event evaluated twice by the run-failure sensor; reminder interval "
            f"{REMINDER_S:.0f} s: {len(posts)} post(s) in the ops channel ({labels.count('notice')}"
            f" notice, {labels.count('reminder')} reminder); {notice.reports} report(s) stored"
        ),
    )
    assert first_posts == 1
    assert failures >= 10
    assert labels == ["notice", "reminder"], posts
    assert counts["duplicated"] == counts["lost"] == counts["unexpected"] == 0
    assert notice.posts == 2 and notice.reports == failures  # repeats of an event: not reports
    assert all(RANGE_KEY in text for text in posts)
