"""Post every failed platform run to the ops channel (Slack), with a link to the run."""

import os

from dagster import DefaultSensorStatus, RunFailureSensorContext, run_failure_sensor

from alert_platform.slack.mrkdwn import escape
from assets.resources import SlackDeliveryResource


def failure_text(context: RunFailureSensorContext, base_url: str) -> str:
    """One escaped mrkdwn line: job, run id (linked), and the failure message."""
    run = context.dagster_run
    message = escape((context.failure_event.message or "")[:1500])
    link = f"<{base_url}/runs/{run.run_id}|{run.run_id[:8]}>"
    return f":rotating_light: Job *{escape(run.job_name)}* failed (run {link}): {message}"


@run_failure_sensor(
    name="ops_run_failure_to_slack",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Posts failed platform runs to the ops channel (ALERT_OPS_CHANNEL).",
)
def ops_run_failure_to_slack(
    context: RunFailureSensorContext, slack: SlackDeliveryResource
) -> None:
    channel = os.environ.get("ALERT_OPS_CHANNEL", "#alerts-ops")
    base_url = os.environ.get(
        "DAGSTER_WEBSERVER_URL", f"http://127.0.0.1:{os.environ.get('DAGSTER_PORT', '3000')}"
    )
    text = failure_text(context, base_url)
    slack.get_client().chat_postMessage(channel=channel, text=text, unfurl_links=False)
