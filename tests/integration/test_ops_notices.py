"""Ops notices against the Slack sandbox and a real platform database (SQLite, PostgreSQL):
one post per key, reminders at most once per interval, never two posts for one event, a 500
answer never re-posted, concurrent notifiers posting once, and the run-failure sensor on real
failed Dagster runs."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance

from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.ops_notices import OPS_NOTICES, POSTED, OpsNotifier, notice_key
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from assets.resources import PlatformResource, SlackDeliveryResource
from tests.integration.ops_state_helpers import (  # noqa: F401  (state_db_url: a fixture)
    channel_posts,
    evaluate_failure_sensor,
    evaluate_success_sensor,
    fail_run,
    state_db_url_fixture,
    succeed_run,
)

pytestmark = pytest.mark.integration

OPS = "#alerts-ops"
HOUR = timedelta(hours=1)


def notifier(settings: Settings, url: str, reminder: timedelta = HOUR) -> OpsNotifier:
    """A notifier handed a client *with* retry handlers: it must drop them itself."""
    return OpsNotifier(make_web_client(settings), OPS, url, reminder)


def age(url: str, key: str, by: timedelta) -> None:
    """Move a key's last post ``by`` into the past (the reminder interval passing)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(OPS_NOTICES.c.last_posted_at).where(OPS_NOTICES.c.key == notice_key(key))
        ).scalar_one()
        conn.execute(
            OPS_NOTICES.update()
            .where(OPS_NOTICES.c.key == notice_key(key))
            .values(last_posted_at=row - by)
        )
    engine.dispose()


def test_one_post_then_one_reminder_per_interval(
    flow_settings: Settings, sandbox: SandboxControl, state_db_url: str
) -> None:
    with notifier(flow_settings, state_db_url) as ops:
        outcomes = [
            ops.notify("range:a", f"range a failed ({n})", event=f"run-{n}") for n in range(5)
        ]
        assert outcomes == [True, False, False, False, False]
        assert channel_posts(sandbox, OPS) == ["range a failed (0)"]
        notice = ops.get("range:a")
        assert notice is not None and notice.state == POSTED
        assert (notice.posts, notice.reports) == (1, 5)

        age(state_db_url, "range:a", HOUR + timedelta(seconds=1))
        assert ops.notify("range:a", "range a failed (5)", event="run-5") is True
        assert ops.notify("range:a", "range a failed (6)", event="run-6") is False
        posts = channel_posts(sandbox, OPS)
        assert len(posts) == 2
        assert posts[1].startswith(":repeat: Reminder, still failing (5 more report(s)")
        assert posts[1].endswith("range a failed (5)")

        # Another key is another incident; a resolved key posts anew.
        assert ops.notify("range:b", "range b failed", event="run-b") is True
        assert ops.resolve("range:a") is True and ops.resolve("range:a") is False
        assert ops.notify("range:a", "range a failed again", event="run-7") is True
    assert len(channel_posts(sandbox, OPS)) == 4


def test_the_same_event_never_posts_twice(
    flow_settings: Settings, sandbox: SandboxControl, state_db_url: str
) -> None:
    with notifier(flow_settings, state_db_url) as ops:
        assert ops.notify("range:c", "c failed", event="run-1") is True
        age(state_db_url, "range:c", 2 * HOUR)
        # A re-evaluated sensor tick hands the same failure event over again: no reminder.
        assert ops.notify("range:c", "c failed", event="run-1") is False
        assert ops.notify("range:c", "c failed", event="run-2") is True
    assert len(channel_posts(sandbox, OPS)) == 2


def test_a_500_is_not_retried_and_not_posted_twice(
    flow_settings: Settings, sandbox: SandboxControl, state_db_url: str
) -> None:
    sandbox.inject_faults(1, "500", methods=["chat.postMessage"])
    before = sandbox.stats()
    with notifier(flow_settings, state_db_url) as ops:
        assert ops.notify("range:d", "d failed", event="run-1") is False  # logged, not raised
        after = sandbox.stats()
        assert after["faults_served"] - before.get("faults_served", 0) == 1
        assert sandbox.pending_faults() == []  # one request: no retry reached the sandbox
        # A 5xx may have posted (real Slack): the next reports within the interval stay quiet.
        assert [ops.notify("range:d", "d failed", event=f"run-{n}") for n in (2, 3)] == [
            False,
            False,
        ]
        notice = ops.get("range:d")
        assert notice is not None and notice.error is not None and "500" in notice.error
    assert len(channel_posts(sandbox, OPS)) <= 1
    assert channel_posts(sandbox, OPS) == []  # the sandbox's 500 posted nothing


def test_a_certain_failure_lets_the_next_report_post(
    flow_settings: Settings, sandbox: SandboxControl, state_db_url: str
) -> None:
    sandbox.inject_faults(1, "429", methods=["chat.postMessage"])
    with notifier(flow_settings, state_db_url) as ops:
        assert ops.notify("range:e", "e failed", event="run-1") is False  # 429: nothing posted
        assert ops.notify("range:e", "e failed", event="run-2") is True
        assert ops.notify("range:e", "e failed", event="run-3") is False
    assert channel_posts(sandbox, OPS) == ["e failed"]


def test_slack_unreachable_never_raises(flow_settings: Settings, state_db_url: str) -> None:
    down = flow_settings.with_overrides(slack_api_url="http://127.0.0.1:9/api/")
    with notifier(down, state_db_url) as ops:
        assert ops.notify("range:f", "f failed", event="run-1") is False
        notice = ops.get("range:f")
        assert notice is not None and notice.state == "failed" and notice.posts == 0


def test_concurrent_notifiers_post_once(
    flow_settings: Settings, sandbox: SandboxControl, state_db_url: str
) -> None:
    workers = 8
    barrier = threading.Barrier(workers)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def report(n: int) -> None:
        try:
            with notifier(flow_settings, state_db_url) as ops:
                barrier.wait(timeout=60)
                outcomes.append(ops.notify("range:g", f"g failed ({n})", event=f"run-{n}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=report, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(outcomes) == [False] * (workers - 1) + [True]
    assert len(channel_posts(sandbox, OPS)) == 1


def test_a_run_touching_a_reported_range_is_covered(
    flow_settings: Settings, sandbox: SandboxControl, state_db_url: str
) -> None:
    with notifier(flow_settings, state_db_url) as ops:
        assert ops.notify_many(["r:0:10-20"], "run 1 failed", event="run-1") is True
        # The retry bundles a new range of another partition: same incident, no post ...
        assert ops.notify_many(["r:0:10-20", "r:1:0-5"], "run 2 failed", event="run-2") is False
        # ... and the new range, failing alone, is covered by that notice too.
        assert ops.notify_many(["r:1:0-5"], "run 3 failed", event="run-3") is False
        # An unrelated range is another incident.
        assert ops.notify_many(["r:2:0-9"], "run 4 failed", event="run-4") is True
    assert channel_posts(sandbox, OPS) == ["run 1 failed", "run 4 failed"]


def test_run_failure_sensor_posts_once_per_range(
    flow_settings: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    state_db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERT_OPS_CHANNEL", OPS)
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "http://dagster.example:3000")
    resources = {
        "platform": PlatformResource(ledger_url=state_db_url),
        "slack": SlackDeliveryResource(
            token=flow_settings.slack_bot_token.get_secret_value(),
            base_url=flow_settings.slack_api_url,
        ),
    }
    range_key = "notifications:0:10-20@abcd1234"
    runs = []
    for attempt in range(4):
        suffix = f"#retry{attempt}" if attempt else ""
        run = fail_run(instance, {"alert-platform/range-0": range_key + suffix})
        evaluate_failure_sensor(instance, run, resources)
        evaluate_failure_sensor(instance, run, resources)  # a tick evaluated twice
        runs.append(run)
    posts = channel_posts(sandbox, OPS)
    assert len(posts) == 1
    assert "stuck_range_job" in posts[0] and runs[0].run_id[:8] in posts[0]
    assert "http://dagster.example:3000/runs/" + runs[0].run_id in posts[0]
    assert range_key in posts[0]

    # A run without ranges is keyed by job and partition: one post of its own.
    other = fail_run(instance, {})
    evaluate_failure_sensor(instance, other, resources)
    assert len(channel_posts(sandbox, OPS)) == 2

    # The range finally succeeds: its incident is resolved; a new failure there posts anew.
    fine = succeed_run(instance, {"alert-platform/range-0": range_key + "#retry4"})
    evaluate_success_sensor(instance, fine, resources)
    with notifier(flow_settings, state_db_url) as ops:
        notice = ops.get(f"run-failure:stuck_range_job:{range_key}")
    assert notice is not None and notice.state == "resolved"
    again = fail_run(instance, {"alert-platform/range-0": range_key + "#retry5"})
    evaluate_failure_sensor(instance, again, resources)
    assert len(channel_posts(sandbox, OPS)) == 3
