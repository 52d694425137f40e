"""Fixtures of the flow tests (test_dagster_flow, test_backfill, test_explain,
test_onboarding_flow): the platform's Dagster definitions run in process against a broker of the
module's own and the session Slack sandbox (see tests/conftest.py for the session stack).

Fixtures:
    flow_options   FlowOptions (module); override it in a module to change what is set up
    flow_settings  Settings (module): a private Kafka broker with the real topics created, the
                   session Slack sandbox and, with ``flow_options.bigquery``, the session
                   BigQuery emulator with a dataset of the module's own
    platform_env   flow_settings, with the env pointing the definitions' resources at them
    sandbox        the Slack sandbox, reset and without a rate limit; reset again afterwards
    instance       an ephemeral Dagster instance (``instance_for_test``)

Plain helpers (tick_and_run, read_topic, ...) are in tests/integration/flow_helpers.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, instance_for_test

from alert_platform.kafka.admin import create_topics
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.sandbox.state import DEFAULT_BURST, DEFAULT_PER_SECOND
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import Settings
from tests.integration.flow_helpers import FlowOptions


@pytest.fixture(scope="module")
def flow_options() -> FlowOptions:
    """The defaults: no BigQuery, the env's inline delivery setting, DAGSTER_HOME untouched."""
    return FlowOptions()


@pytest.fixture(scope="module")
def flow_settings(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    flow_options: FlowOptions,
    slack_settings: Settings,
) -> Iterator[Settings]:
    """A broker of its own (the pipelines use the real topic names) and the session sandbox;
    with ``flow_options.bigquery``, the session BigQuery emulator with a dataset of its own."""
    name = request.module.__name__.rpartition(".")[2]
    overrides = {
        "slack_api_url": slack_settings.slack_api_url,
        "slack_bot_token": slack_settings.slack_bot_token,
    }
    if flow_options.bigquery:
        bigquery: Settings = request.getfixturevalue("bigquery_settings")
        overrides |= {
            "bigquery_api_endpoint": bigquery.bigquery_api_endpoint,
            "bigquery_project": bigquery.bigquery_project,
            "bigquery_dataset": f"{name}_{uuid.uuid4().hex}",
        }
    own = free_port_settings(tmp_path_factory.mktemp(name))
    stack = LocalStack(own, die_with_parent=True)
    stack.up(["kafka"])
    # The flow tests read what they produced before the first tick: start tails at the start.
    settings = own.with_overrides(**overrides, start_policy="earliest")
    create_topics(settings)
    try:
        yield settings
    finally:
        stack.down()


@pytest.fixture
def platform_env(
    flow_settings: Settings, flow_options: FlowOptions, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Point the definitions' resources (environment-configured) at the test stack."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", flow_settings.bootstrap_servers)
    monkeypatch.setenv("ALERT_PLATFORM_DATA_DIR", str(flow_settings.data_dir))
    monkeypatch.setenv("SLACK_API_URL", flow_settings.slack_api_url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", flow_settings.slack_bot_token.get_secret_value())
    monkeypatch.setenv("ALERT_PLATFORM_START_POLICY", flow_settings.start_policy)
    if flow_options.inline_delivery is not None:
        inline = "true" if flow_options.inline_delivery else "false"
        monkeypatch.setenv("ALERT_PLATFORM_INLINE_DELIVERY", inline)
    if flow_options.bigquery:
        monkeypatch.setenv("BIGQUERY_API_ENDPOINT", flow_settings.bigquery_api_endpoint)
        monkeypatch.setenv("BIGQUERY_PROJECT", flow_settings.bigquery_project)
        monkeypatch.setenv("BIGQUERY_DATASET", flow_settings.bigquery_dataset)
    if flow_options.clear_dagster_home:
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return flow_settings


@pytest.fixture
def sandbox(flow_settings: Settings) -> Iterator[SandboxControl]:
    """The Slack sandbox, reset and without a rate limit; afterwards reset at the default limit."""
    control = SandboxControl(flow_settings.slack_api_url)
    control.reset()
    control.set_rate_limit(per_second=0, burst=0)
    yield control
    control.reset()
    control.set_rate_limit(per_second=DEFAULT_PER_SECOND, burst=DEFAULT_BURST)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance
