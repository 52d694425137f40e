"""Scenario 5: configuration faults fail fast, name the setting to fix, never print a secret.

Wrong ``KAFKA_BOOTSTRAP_SERVERS`` (the ``alert-platform`` commands, the tail sensor, an
enrichment run), an unknown topic (the tail sensor, a delivery run over a missing topic,
``topics create --topics``), a wrong ``BIGQUERY_PROJECT`` (the onboarding producer run), and a
missing, wrong or revoked ``SLACK_BOT_TOKEN`` (a delivery run). Every failure must come within
seconds and say which setting (or command) fixes it; the Kafka SASL password and the Slack token
set for these runs must appear in no output, log line or Dagster event. Once the revoked token
is restored, the range that failed delivers its alert, once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from alert_platform import topics
from alert_platform.kafka.admin import create_topics
from alert_platform.local.ports import find_free_port
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import Settings
from tests.faults.config_helpers import (
    CONFIG_ALERTS,
    FAST_S,
    KAFKA_PASSWORD,
    LEAKS,
    OUTCOMES,
    WRONG_TOKEN,
    count_leaks,
    note,
    run_cli,
    sasl_env,
)
from tests.faults.harness import produce, read_topic
from tests.faults.results import record, tally

pytestmark = pytest.mark.integration

EXPECTED_DELIVERED: set[str] = set()  # alerts that must reach Slack once (after the token fix)


@pytest.mark.parametrize(
    "args",
    [["topics", "create"], ["topics", "list"], ["demo", "events", "--count", "1"]],
    ids=lambda args: " ".join(args[:2]),
)
def test_commands_with_wrong_bootstrap_servers_fail_fast(args: list[str], tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{find_free_port()}"  # nothing listens there
    code, output, seconds = run_cli([*args, "--data-dir", str(tmp_path)] if args[0] == "topics"
                                    else args, sasl_env(bootstrap))  # fmt: skip
    note(f"`{' '.join(args[:2])}`, wrong KAFKA_BOOTSTRAP_SERVERS", seconds)
    assert code == 1, output
    assert "KAFKA_BOOTSTRAP_SERVERS" in output and bootstrap in output, output
    assert "Traceback" not in output, output
    assert count_leaks(f"`{args[0]}` output", [KAFKA_PASSWORD], output) == 0
    assert seconds < FAST_S


@pytest.mark.slow
def test_dev_with_an_unreachable_broker_fails_fast(tmp_path: Path) -> None:
    """A non-local KAFKA_BOOTSTRAP_SERVERS (the stack does not run it) that does not answer."""
    own = free_port_settings(tmp_path / "data")
    bootstrap = f"127.0.0.2:{find_free_port()}"
    env = {
        **sasl_env(bootstrap),
        "SLACK_API_URL": own.slack_api_url,
        "BIGQUERY_API_ENDPOINT": own.bigquery_api_endpoint,
        "DAGSTER_PORT": str(find_free_port()),
    }
    code, output, seconds = run_cli(["dev", "--data-dir", str(own.data_dir)], env)
    note("`dev`, unreachable KAFKA_BOOTSTRAP_SERVERS", seconds)
    assert code == 1, output
    assert "KAFKA_BOOTSTRAP_SERVERS" in output and bootstrap in output, output
    assert "Stopped Dagster and the local stack." in output
    assert count_leaks("`dev` output", [KAFKA_PASSWORD], output) == 0
    assert seconds < FAST_S + 30  # the emulator and the sandbox start first


def test_unknown_topic_on_the_command_line() -> None:
    code, output, seconds = run_cli(["topics", "create", "--topics", "alerts-typo"], {})
    note("`topics create --topics alerts-typo`", seconds)
    assert code == 1
    assert "unknown topic(s) alerts-typo" in output and topics.SLACK_MESSAGES in output


# -- Dagster runs and sensors ----------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of its own with no topic yet (the unknown-topic cases run first)."""
    own = free_port_settings(tmp_path_factory.mktemp("config-faults"))
    stack = LocalStack(own, die_with_parent=True)
    stack.up(["kafka"])
    try:
        yield own
    finally:
        stack.down()


@pytest.fixture
def platform_env(monkeypatch: pytest.MonkeyPatch, broker: Settings) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("KAFKA_", "SLACK_", "BIGQUERY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("ALERT_PLATFORM_DATA_DIR", str(broker.data_dir))
    monkeypatch.setenv("SLACK_BOT_TOKEN", WRONG_TOKEN)  # resources resolve it (never printed)
    return monkeypatch


def evaluate_sensor(name: str) -> str:
    """The error a sensor evaluation raises (its message and causes)."""
    from dagster import build_sensor_context, instance_for_test

    from alert_platform.definitions import defs

    sensor_def = defs.get_repository_def().get_sensor_def(name)
    with (
        instance_for_test() as instance,
        build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as ctx,
        pytest.raises(Exception) as caught,
    ):
        sensor_def(ctx)
    return _chain(caught.value)


def _chain(exc: BaseException | None) -> str:
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def execute(
    job_name: str, run_config: dict[str, Any], partition_key: str | None = None
) -> tuple[bool, str, str]:
    """Run a job in process: (success, failure text, every event of the run serialized)."""
    from dagster import instance_for_test
    from dagster._serdes import serialize_value

    from alert_platform.definitions import defs

    job = defs.resolve_job_def(job_name)
    with instance_for_test() as instance:
        try:
            result = job.execute_in_process(
                run_config=run_config,
                instance=instance,
                partition_key=partition_key,
                raise_on_error=False,
            )
        except Exception as exc:  # e.g. resource configuration that cannot be resolved
            return False, _chain(exc), ""
        texts = []
        for event in result.all_events:
            data = event.event_specific_data
            error = getattr(data, "error", None)
            if error is not None:
                texts.append(error.to_string())
            failure = getattr(data, "user_failure_data", None)
            if failure is not None and failure.description:
                texts.append(failure.description)
        logs = "\n".join(serialize_value(entry) for entry in instance.all_logs(result.run_id))
        return result.success, "\n".join(texts), logs


def ranges_config(op: str, topic: str, start: int = 0, end: int = 1) -> dict[str, Any]:
    rng = {"topic": topic, "partition": 0, "start": start, "end": end}
    return {"ops": {op: {"config": {"ranges": [rng]}}}}


def test_tail_sensor_on_a_missing_topic_says_to_create_it(platform_env: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    message = evaluate_sensor("connector_failure_tail")
    note("tail sensor, topic missing", time.monotonic() - started)
    assert "does not exist" in message and "alert-platform topics create" in message, message


def test_delivery_run_over_a_missing_topic_says_to_create_it(
    platform_env: pytest.MonkeyPatch,
) -> None:
    started = time.monotonic()
    ok, text, _logs = execute(
        "slack_delivery_job", ranges_config("slack_deliveries", "slack-messages-typo")
    )
    note("delivery run, topic missing", time.monotonic() - started)
    assert not ok
    assert "alert-platform topics create" in text, text
    assert time.monotonic() - started < FAST_S


def test_tail_sensor_with_wrong_bootstrap_servers_names_the_setting(
    platform_env: pytest.MonkeyPatch,
) -> None:
    platform_env.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{find_free_port()}")
    started = time.monotonic()
    message = evaluate_sensor("connector_failure_tail")
    note("tail sensor, wrong KAFKA_BOOTSTRAP_SERVERS", time.monotonic() - started)
    assert "KAFKA_BOOTSTRAP_SERVERS" in message, message
    assert time.monotonic() - started < FAST_S


def test_enrichment_run_with_wrong_bootstrap_servers_names_the_setting(
    platform_env: pytest.MonkeyPatch,
) -> None:
    for name, value in sasl_env(f"127.0.0.1:{find_free_port()}").items():
        platform_env.setenv(name, value)
    platform_env.setenv("SLACK_BOT_TOKEN", WRONG_TOKEN)
    started = time.monotonic()
    ok, text, logs = execute(
        "connector_failure_alerts_job",
        ranges_config("connector_failure_alerts", topics.NOTIFICATIONS),
        partition_key=datetime.now(UTC).strftime("%Y-%m-%d-%H:00"),
    )
    note("enrichment run, wrong KAFKA_BOOTSTRAP_SERVERS", time.monotonic() - started)
    assert not ok
    assert "KAFKA_BOOTSTRAP_SERVERS" in text, text
    assert count_leaks("enrichment run", [KAFKA_PASSWORD, WRONG_TOKEN], text, logs) == 0
    assert time.monotonic() - started < FAST_S


def test_onboarding_run_with_wrong_bigquery_project_names_the_setting(
    platform_env: pytest.MonkeyPatch, bigquery_settings: Settings
) -> None:
    platform_env.setenv("BIGQUERY_API_ENDPOINT", bigquery_settings.bigquery_api_endpoint)
    platform_env.setenv("BIGQUERY_PROJECT", "wrong-project")
    started = time.monotonic()
    ok, text, _logs = execute("onboarding_producer_job", {}, partition_key=date.today().isoformat())
    note("onboarding run, wrong BIGQUERY_PROJECT", time.monotonic() - started)
    assert not ok
    assert "BIGQUERY_PROJECT" in text and "wrong-project" in text, text
    assert time.monotonic() - started < FAST_S


# -- the Slack token ---------------------------------------------------------------------------


@pytest.fixture
def one_alert(platform_env: pytest.MonkeyPatch, broker: Settings, slack_settings: Settings):
    """One ``slack-messages`` record (at offset 0 of partition 0 of a fresh topic set)."""
    create_topics(broker)
    platform_env.setenv("SLACK_API_URL", slack_settings.slack_api_url)
    alert_id = f"config-fault-{time.time_ns()}"
    CONFIG_ALERTS.add(alert_id)
    message = {
        "alert_id": alert_id,
        "pipeline": "connector_failure",
        "channel_id": "U0DEMO0001",
        "text": "A configuration-fault alert",
        "blocks": None,
        "source": {"topic": topics.NOTIFICATIONS, "partition": 0, "offset": 0, "timestamp": 0},
        "created_at": datetime.now(UTC).isoformat(),
        "event_time": datetime.now(UTC).isoformat(),
    }
    topic = f"slack-messages-{alert_id}"  # its own topic: offset 0 is this record
    create_topics(broker, [topics.TopicSpec(topic, 1)])
    produce(broker, topic, [(alert_id.encode(), json.dumps(message).encode())])
    return alert_id, ranges_config("slack_deliveries", topic)


def posted(sandbox: SandboxControl, alert_id: str) -> int:
    return sum(
        1
        for m in sandbox.messages()
        if ((m.get("metadata") or {}).get("event_payload") or {}).get("alert_id") == alert_id
    )


def test_missing_slack_token_names_the_setting(
    one_alert: tuple[str, dict[str, Any]], platform_env: pytest.MonkeyPatch
) -> None:
    _alert_id, config = one_alert
    platform_env.delenv("SLACK_BOT_TOKEN", raising=False)
    started = time.monotonic()
    ok, text, _logs = execute("slack_delivery_job", config)
    note("delivery run, SLACK_BOT_TOKEN missing", time.monotonic() - started)
    assert not ok
    assert "SLACK_BOT_TOKEN" in text, text


def test_wrong_slack_token_names_the_setting_and_is_never_printed(
    one_alert: tuple[str, dict[str, Any]],
    platform_env: pytest.MonkeyPatch,
    slack_settings: Settings,
    capfd: pytest.CaptureFixture[str],
) -> None:
    alert_id, config = one_alert
    platform_env.setenv("SLACK_BOT_TOKEN", WRONG_TOKEN)
    started = time.monotonic()
    ok, text, logs = execute("slack_delivery_job", config)
    note("delivery run, wrong SLACK_BOT_TOKEN", time.monotonic() - started)
    out, err = capfd.readouterr()
    assert not ok
    assert "SLACK_BOT_TOKEN" in text and "invalid_auth" in text, text
    assert count_leaks("wrong token", [WRONG_TOKEN], text, logs, out, err) == 0
    assert posted(SandboxControl(slack_settings.slack_api_url), alert_id) == 0


def test_revoked_slack_token_stops_delivery_until_it_is_fixed(
    one_alert: tuple[str, dict[str, Any]],
    platform_env: pytest.MonkeyPatch,
    slack_settings: Settings,
    capfd: pytest.CaptureFixture[str],
) -> None:
    alert_id, config = one_alert
    EXPECTED_DELIVERED.add(alert_id)  # it must arrive once the token is fixed
    token = slack_settings.slack_bot_token.get_secret_value()
    platform_env.setenv("SLACK_BOT_TOKEN", token)
    sandbox = SandboxControl(slack_settings.slack_api_url)
    sandbox.set_rate_limit(per_second=0)
    sandbox.revoke_token()
    try:
        started = time.monotonic()
        ok, text, logs = execute("slack_delivery_job", config)
        note("delivery run, SLACK_BOT_TOKEN revoked", time.monotonic() - started)
    finally:
        sandbox.revoke_token(False)
        sandbox.set_rate_limit(per_second=1, burst=3)
    out, err = capfd.readouterr()
    assert not ok
    assert "SLACK_BOT_TOKEN" in text and "token_revoked" in text, text
    assert count_leaks("revoked token", [token], text, logs, out, err) == 0
    assert posted(sandbox, alert_id) == 0
    # Token fixed: the same range, run again, delivers the alert, once.
    ok, text, _logs = execute("slack_delivery_job", config)
    assert ok, text
    assert posted(sandbox, alert_id) == 1


def test_record_config_results(slack_settings: Settings, broker: Settings) -> None:
    """The fault-table row, every count measured: the cases run in this session (this module and
    test_config_cases.py), what the sandbox received for this module's alerts, the dead letters
    on this module's broker and the secrets found in outputs."""
    cases = dict(OUTCOMES)
    assert cases, "run the configuration-fault modules (tests/faults/test_config_*.py) first"
    # Only the alert held back by the revoked token must arrive (once, after the fix); the
    # wrong/missing-token alerts are never retried, so any post of theirs is unexpected.
    posted_ids = [
        ((m.get("metadata") or {}).get("event_payload") or {}).get("alert_id")
        for m in SandboxControl(slack_settings.slack_api_url).messages()
    ]
    posted_ids = [a for a in posted_ids if a in CONFIG_ALERTS]
    figures = tally(EXPECTED_DELIVERED, posted_ids)
    create_topics(broker)  # the dead-letter topics exist (empty) if no delivery ran
    dead_letters = len(read_topic(broker, topics.SLACK_MESSAGES_DLQ)) + len(
        read_topic(broker, topics.ALERTS_DLQ)
    )
    leaks = sum(LEAKS.values())
    slowest = max(cases.items(), key=lambda item: item[1])
    record(
        "configuration faults",
        trials=len(cases),
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=dead_letters,
        notes=(
            f"{len(cases)} faults, each failing (or refused) with the setting (or command) to "
            f"fix; {leaks} secret leaks found in {len(LEAKS)} places checked; "
            f"{figures['unexpected']} unexpected posts; slowest {slowest[1]:.0f}s "
            f"({slowest[0]}); alerts held back by a revoked token, then delivered once after "
            f"the fix: {figures['delivered_once']} of {figures['alerts_expected']}"
        ),
        seconds=cases,
        secret_leaks=leaks,
    )
    assert leaks == 0 and figures["unexpected"] == 0 and figures["duplicated"] == 0
