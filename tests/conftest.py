"""Shared fixtures: one embedded local stack per test session, on free ports, in a tmp dir.

Services start lazily: a module that only asks for ``kafka_settings`` starts only the broker;
``settings`` / ``local_stack`` start everything. All processes are stopped at session end.

Fixtures:
    stack_settings   Settings on free ports + tmp data dir (nothing started)
    local_stack      LocalStack with kafka, bigquery and slack running
    settings         Settings pointing at the full running stack
    kafka_settings   Settings with only the Kafka broker guaranteed running
    bigquery_settings  Settings with only the BigQuery emulator guaranteed running
    slack_settings   Settings with only the Slack sandbox guaranteed running
    unique_topic     a fresh topic name (uuid suffix), not created
    make_topic       factory: make_topic(partitions=1, config=None) -> created topic name

Settings default to production; the test session runs with the local profile
(``alert_platform.local.profile.LOCAL_ENVIRONMENT``), applied to ``os.environ`` here, before any
test module is imported, so ``Settings.from_env()`` (the Dagster resources, child processes)
sees the local stand-ins. Tests that build ``Settings(...)`` directly get production defaults;
those that talk to a stand-in use ``local_settings()``.
"""

from __future__ import annotations

import gc
import os
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from alert_platform.local.profile import LOCAL_ENVIRONMENT, local_settings
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import Settings

os.environ.update(LOCAL_ENVIRONMENT)  # the local profile for the whole session (see above)
# The sensor tests exercise the batch path (every range a run); stream-mode tests set the mode.
os.environ.setdefault("ALERT_PLATFORM_MODE", "batch")


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the session stack: free ports, tmp data dir. Starts nothing."""
    return free_port_settings(tmp_path_factory.mktemp("alert-platform-data"), local_settings())


@pytest.fixture(scope="session")
def _session_stack(stack_settings: Settings) -> Iterator[LocalStack]:
    stack = LocalStack(stack_settings, die_with_parent=True)
    try:
        yield stack
    finally:
        gc.collect()  # destroy unreferenced Kafka clients first (no reconnect noise on stderr)
        stack.down()


@pytest.fixture(scope="session")
def local_stack(_session_stack: LocalStack) -> LocalStack:
    """The session's LocalStack with every service (kafka, bigquery, slack) running."""
    _session_stack.up()
    return _session_stack


@pytest.fixture(scope="session")
def settings(local_stack: LocalStack) -> Settings:
    """Settings pointing at the full running local stack."""
    return local_stack.settings


@pytest.fixture(scope="session")
def kafka_settings(_session_stack: LocalStack) -> Settings:
    """Settings whose Kafka broker is running (other services may not be)."""
    _session_stack.up(["kafka"])
    return _session_stack.settings


@pytest.fixture(scope="session")
def bigquery_settings(_session_stack: LocalStack) -> Settings:
    """Settings whose BigQuery emulator is running (other services may not be)."""
    _session_stack.up(["bigquery"])
    return _session_stack.settings


@pytest.fixture(scope="session")
def slack_settings(_session_stack: LocalStack) -> Settings:
    """Settings whose Slack sandbox is running (other services may not be)."""
    _session_stack.up(["slack"])
    return _session_stack.settings


def _topic_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name).strip("-")[:60]
    return f"test-{stem}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> str:
    """A fresh topic name (``test-<test name>-<uuid>``); tests share one broker. Not created."""
    return _topic_name(request)


@pytest.fixture
def make_topic(request: pytest.FixtureRequest, kafka_settings: Settings) -> Callable[..., str]:
    """Factory creating a fresh topic on the session broker and returning its name.

    ``make_topic(partitions=1, config=None, name=None)``.
    """
    from alert_platform.kafka.admin import create_topics
    from alert_platform.topics import TopicSpec

    def make(
        partitions: int = 1, config: dict[str, str] | None = None, name: str | None = None
    ) -> str:
        topic = name or _topic_name(request)
        create_topics(kafka_settings, [TopicSpec(topic, partitions, dict(config or {}))])
        return topic

    return make
