"""Failed platform runs to the ops channel (Slack): one post per failing range, then a reminder
at most every ``ALERT_OPS_REMINDER_MINUTES``, never two posts for one failure event.

A tail run carries one ``alert-platform/range-N`` tag per partition it reads (the range's key,
``...#retryN`` on re-launches); the notice keys are those range keys without the retry suffix,
so every retry of a stuck range reports the same incident (:class:`OpsNotifier` decides whether
to post, see :mod:`alert_platform.ops_notices`). A run without range tags is keyed by its job and
partition. A later successful run of the same range (or job and partition) resolves its keys.
"""

from __future__ import annotations

import re
from datetime import timedelta

from dagster import (
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    run_failure_sensor,
    run_status_sensor,
)

from alert_platform.ops_notices import OpsNotifier
from alert_platform.settings import Settings
from alert_platform.slack.client import make_ops_client
from alert_platform.slack.mrkdwn import escape
from assets.resources import PlatformResource, SlackDeliveryResource
from sensors.stream_supervisor import STREAM_TAG

RANGE_TAG_PREFIX = "alert-platform/range-"
_RETRY_SUFFIX = re.compile(r"#retry\d+$")


def failure_keys(run: DagsterRun) -> list[str]:
    """The notice keys of ``run``: its range keys without ``#retryN``, else job and partition."""
    ranges = sorted(
        _RETRY_SUFFIX.sub("", value)
        for tag, value in run.tags.items()
        if tag.startswith(RANGE_TAG_PREFIX) and value
    )
    if ranges:
        return [f"run-failure:{run.job_name}:{key}" for key in ranges]
    stream = run.tags.get(STREAM_TAG)
    if stream:  # each stream worker's failures are an incident of their own
        return [f"run-failure:{run.job_name}:stream:{stream}"]
    partition = run.tags.get("dagster/partition") or "-"
    return [f"run-failure:{run.job_name}:{partition}"]


def failure_text(context: RunFailureSensorContext, base_url: str) -> str:
    """One escaped mrkdwn line: job, run id (linked), its ranges, and the failure message."""
    run = context.dagster_run
    message = escape((context.failure_event.message or "")[:1500])
    link = f"<{base_url.rstrip('/')}/runs/{run.run_id}|{run.run_id[:8]}>"
    ranges = sorted(v for k, v in run.tags.items() if k.startswith(RANGE_TAG_PREFIX) and v)
    where = f" ranges {escape(', '.join(ranges)[:500])}" if ranges else ""
    return f":rotating_light: Job *{escape(run.job_name)}* failed (run {link}{where}): {message}"


def ops_notifier(platform: PlatformResource, slack: SlackDeliveryResource) -> OpsNotifier:
    """The notifier of the deployment: ops channel, ledger database, reminder interval."""
    settings = _settings(platform, slack)
    return OpsNotifier(
        make_ops_client(settings),
        settings.slack_ops_channel,
        settings.effective_ledger_url,
        timedelta(minutes=settings.ops_reminder_minutes),
    )


def _settings(platform: PlatformResource, slack: SlackDeliveryResource) -> Settings:
    settings = platform.settings()
    return settings.with_overrides(
        slack_api_url=slack.base_url or settings.slack_api_url,
        slack_bot_token=slack.token or settings.slack_bot_token,
    )


@run_failure_sensor(
    name="ops_run_failure_to_slack",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description=(
        "Posts failed platform runs to the ops channel (ALERT_OPS_CHANNEL): one post per "
        "failing range, then a reminder at most every ALERT_OPS_REMINDER_MINUTES."
    ),
)
def ops_run_failure_to_slack(
    context: RunFailureSensorContext, platform: PlatformResource, slack: SlackDeliveryResource
) -> None:
    settings = _settings(platform, slack)
    with ops_notifier(platform, slack) as notifier:
        posted = notifier.notify_many(
            failure_keys(context.dagster_run),
            failure_text(context, settings.webserver_url),
            event=context.dagster_run.run_id,
        )
    context.log.info(f"run {context.dagster_run.run_id}: ops notice posted={posted}")


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    name="ops_run_success_resolves",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="A successful run of a range (or job and partition) that failed before ends its "
    "ops incident: the next failure posts anew.",
)
def ops_run_success_resolves(
    context: RunStatusSensorContext, platform: PlatformResource, slack: SlackDeliveryResource
) -> None:
    with ops_notifier(platform, slack) as notifier:
        notifier.resolve_many(failure_keys(context.dagster_run))
