"""Dagster resources: thin, configurable wrappers that hand the core its settings and clients."""

from dagster import ConfigurableResource
from dagster_slack import SlackResource
from pydantic import Field
from slack_sdk import WebClient

from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client


class PlatformResource(ConfigurableResource):
    """Where Kafka, BigQuery, the ledger and snapshots live.

    Empty fields fall back to the environment (``alert_platform.settings.Settings.from_env``),
    so a deployment is configured by environment variables and tests by explicit values.
    """

    kafka_bootstrap_servers: str = Field(default="", description="KAFKA_BOOTSTRAP_SERVERS")
    data_dir: str = Field(default="", description="ALERT_PLATFORM_DATA_DIR")
    bigquery_api_endpoint: str = Field(default="", description="BIGQUERY_API_ENDPOINT")
    bigquery_project: str = Field(default="", description="BIGQUERY_PROJECT")
    bigquery_dataset: str = Field(default="", description="BIGQUERY_DATASET")
    ledger_url: str = Field(default="", description="ALERT_LEDGER_URL")

    def settings(self) -> Settings:
        """The core's settings: environment first, then this resource's non-empty fields."""
        base = Settings.from_env()
        overrides: dict[str, object] = {}
        if self.kafka_bootstrap_servers:
            overrides["kafka"] = {**base.kafka, "bootstrap.servers": self.kafka_bootstrap_servers}
        if self.data_dir:
            from pathlib import Path

            overrides["data_dir"] = Path(self.data_dir)
        if self.bigquery_api_endpoint:
            overrides["bigquery_api_endpoint"] = self.bigquery_api_endpoint
        if self.bigquery_project:
            overrides["bigquery_project"] = self.bigquery_project
        if self.bigquery_dataset:
            overrides["bigquery_dataset"] = self.bigquery_dataset
        if self.ledger_url:
            overrides["ledger_url"] = self.ledger_url
        return base.with_overrides(**overrides) if overrides else base


class SlackDeliveryResource(SlackResource):
    """dagster-slack's resource, pointed at any Slack Web API base URL, with our retry policy
    and one deadline per call (``SLACK_CALL_TIMEOUT_S``; the lease is validated against it).

    The token comes from ``EnvVar("SLACK_BOT_TOKEN")`` in every deployment, so it never shows in
    run config, logs or the UI.
    """

    base_url: str = Field(
        default="", description="Slack Web API base URL; empty: SLACK_API_URL or the default"
    )
    timeout_seconds: float = Field(
        default=0,
        description=(
            "Deadline of one Slack call in seconds (connect, send and the whole answer); "
            "0: SLACK_CALL_TIMEOUT_S (default 10)"
        ),
    )

    def get_client(self) -> WebClient:
        """A client whose every call ends within the deadline (``alert_platform.slack.client``)."""
        settings = Settings.from_env()
        settings = settings.with_overrides(
            slack_api_url=self.base_url or settings.slack_api_url, slack_bot_token=self.token
        )
        deadline = float(self.timeout_seconds or settings.slack_call_timeout_s)
        return make_web_client(settings, timeout=deadline, deadline=deadline)
