"""Dagster resources: the core's settings, and the clients a run uses (Kafka producer, delivery
ledger, Slack, BigQuery), each made at first use and closed when the run's steps are done."""

import logging
from datetime import timedelta
from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from dagster_slack import SlackResource
from pydantic import Field, PrivateAttr
from slack_sdk import WebClient

from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.kafka.writer import BatchProducer
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client

LOG = logging.getLogger("assets.resources")
# How long a run's teardown waits for records a failed step left queued.
FLUSH_AT_TEARDOWN_S = 10.0


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


class KafkaProducerResource(ConfigurableResource):
    """The run's Kafka producer (``alert_platform.kafka.writer.BatchProducer``), made at first
    use from the platform's settings and flushed once more when the run's steps are done."""

    platform: PlatformResource
    _producer: BatchProducer | None = PrivateAttr(default=None)

    def get_producer(self) -> BatchProducer:
        """The run's producer (one for every step of the run in this process)."""
        if self._producer is None:
            self._producer = BatchProducer.from_settings(self.platform.settings())
        return self._producer

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._producer = None

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        left = producer.producer.flush(FLUSH_AT_TEARDOWN_S)  # what a failed step left queued
        if left:
            LOG.warning("%d Kafka record(s) still undelivered when the run ended", left)


class DeliveryLedgerResource(ConfigurableResource):
    """The run's delivery ledger (``alert_platform.delivery.ledger.DeliveryLedger``), its claims
    owned by the run id (``alert-platform explain`` names the delivering run); opened at first
    use, closed when the run's steps are done."""

    platform: PlatformResource
    _ledger: DeliveryLedger | None = PrivateAttr(default=None)
    _owner: str | None = PrivateAttr(default=None)

    def get_ledger(self) -> DeliveryLedger:
        """The run's ledger."""
        if self._ledger is None:
            settings = self.platform.settings()
            lease = timedelta(seconds=settings.delivery_lease_s)
            self._ledger = DeliveryLedger(
                settings.effective_ledger_url, owner=self._owner, lease=lease
            )
        return self._ledger

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._ledger = None
        run = context.run
        self._owner = run.run_id if run is not None else None

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        ledger, self._ledger = self._ledger, None
        if ledger is not None:
            ledger.close()


class BigQueryClientResource(ConfigurableResource):
    """The run's ``google.cloud.bigquery.Client`` (the emulator or Google, per the settings),
    made at first use and closed when the run's steps are done."""

    platform: PlatformResource
    _client: Any = PrivateAttr(default=None)

    def get_client(self) -> Any:
        """The run's BigQuery client (``google.cloud.bigquery.Client``)."""
        if self._client is None:
            # Imported here: the BigQuery client costs ~1 s to import.
            from alert_platform.bigquery.client import make_bigquery_client

            self._client = make_bigquery_client(self.platform.settings())
        return self._client

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._client = None

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
