"""Scenario 5 (continued): bad settings and the local stand-ins' secrets, on the real local stack.

Secrets in ``repr`` and errors, Kubernetes service variables beside a real broker, an unknown
``KAFKA_*`` name, out-of-range numbers, a lease shorter than the Slack call deadline, the bot
token of a started sandbox (not on its command line, in its pid file or its log), the dev
``dagster.yaml`` against a real PostgreSQL, and the sandbox control API refusing foreign hosts
and non-JSON bodies over real HTTP. Each case adds its figures to the configuration-fault row
that ``test_config_faults.py::test_record_config_results`` writes.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.local.dev import dagster_instance_yaml, prepare_dagster_home
from alert_platform.local.profile import local_settings
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import LOCAL_SLACK_TOKEN, ConfigError, Settings
from tests.faults.config_helpers import (
    FAST_S,
    KAFKA_PASSWORD,
    count_leaks,
    note,
    run_cli,
    sasl_env,
)

pytestmark = pytest.mark.integration

SANDBOX_TOKEN = f"xoxb-config-cases-{uuid.uuid4().hex}"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_PASSWORD = "config-cases-pg-password-8128"
KUBERNETES_ENV = {  # what Kubernetes sets for a Service named "kafka" (and one named "kafka-ui")
    "KAFKA_PORT": "tcp://10.96.0.10:9092",
    "KAFKA_PORT_9092_TCP": "tcp://10.96.0.10:9092",
    "KAFKA_PORT_9092_TCP_ADDR": "10.96.0.10",
    "KAFKA_PORT_9092_TCP_PORT": "9092",
    "KAFKA_PORT_9092_TCP_PROTO": "tcp",
    "KAFKA_SERVICE_HOST": "10.96.0.10",
    "KAFKA_SERVICE_PORT": "9092",
    "KAFKA_SERVICE_PORT_BROKER": "9092",
    "KAFKA_UI_SERVICE_HOST": "10.96.0.11",
    "KAFKA_UI_PORT_8080_TCP_ADDR": "10.96.0.11",
}


# -- settings at start --------------------------------------------------------------------------


def test_settings_and_their_errors_show_no_secret() -> None:
    env = {
        **sasl_env("127.0.0.1:9"),
        "KAFKA_SSL_KEY_PASSWORD": "config-cases-ssl-key-password",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "config-cases-oauth-secret",
        "SLACK_BOT_TOKEN": SANDBOX_TOKEN,
        "ALERT_LEDGER_URL": f"postgresql+psycopg2://ledger:{PG_PASSWORD}@127.0.0.1:5432/test",
        "ALERT_PLATFORM_DAGSTER_POSTGRES_URL": f"postgresql://dg:{PG_PASSWORD}@127.0.0.1/test",
    }
    secrets = [
        KAFKA_PASSWORD,
        SANDBOX_TOKEN,
        PG_PASSWORD,
        "config-cases-ssl-key-password",
        "config-cases-oauth-secret",
    ]
    settings = Settings.from_env(env)
    shown = [repr(settings), str(settings), repr(settings.kafka)]
    # A start-up error in the same environment (the command fails on a bad number).
    code, output, seconds = run_cli(["topics", "list"], {**env, "ALERT_DEDUP_WINDOW_HOURS": "-1"})
    note("secrets in repr/str and a start-up error", seconds)
    assert code == 1 and "ALERT_DEDUP_WINDOW_HOURS" in output, output
    assert count_leaks("Settings repr/str", secrets, *shown) == 0, shown
    assert count_leaks("start-up error", secrets, output) == 0, output
    assert "sasl.username': 'fault-suite'" in shown[0]  # the rest is still shown


def test_kubernetes_service_variables_leave_clients_working(
    kafka_settings: Settings, make_topic
) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers, **KUBERNETES_ENV}
    started = time.monotonic()
    settings = Settings.from_env(env)
    assert dict(settings.kafka) == {"bootstrap.servers": kafka_settings.bootstrap_servers}
    topic = make_topic()
    producer = make_producer(settings)
    producer.produce(topic, key=b"k", value=b"through a kubernetes-like environment")
    assert producer.flush(30) == 0
    consumer = make_consumer(settings)
    try:
        from confluent_kafka import TopicPartition

        consumer.assign([TopicPartition(topic, 0, 0)])
        message = None
        deadline = time.monotonic() + 30
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
        assert message is not None and message.error() is None
        assert message.value() == b"through a kubernetes-like environment"
    finally:
        consumer.close()
    code, output, _seconds = run_cli(["topics", "list"], env)
    note("Kubernetes KAFKA_* service variables", time.monotonic() - started)
    assert code == 0, output
    assert topic in output


def test_an_unknown_kafka_variable_fails_fast_naming_it(kafka_settings: Settings) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "KAFKA_BOOTSTRAP_SERVER": "typo:9092",
    }
    code, output, seconds = run_cli(["topics", "list"], env)
    note("unknown KAFKA_BOOTSTRAP_SERVER", seconds)
    assert code == 1, output
    assert "KAFKA_BOOTSTRAP_SERVER:" in output and "not a librdkafka" in output, output
    assert "Traceback" not in output and "typo:9092" not in output, output
    assert seconds < FAST_S


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("ALERT_DEDUP_WINDOW_HOURS", "-1", "from 1 to 8760"),
        ("ALERT_DEDUP_WINDOW_HOURS", "1000000", "from 1 to 8760"),
        ("ALERT_PLATFORM_DELIVERY_WORKERS", "100000", "from 1 to 1024"),
        ("SLACK_CHANNEL_RATE_PER_S", "1e9", "from 0.001 to 10000"),
        ("DAGSTER_PORT", "70000", "from 1 to 65535"),
    ],
)
def test_out_of_range_numbers_fail_at_start(variable: str, value: str, allowed: str) -> None:
    code, output, seconds = run_cli(["topics", "list"], {variable: value})
    note(f"{variable}={value}", seconds)
    assert code == 1, output
    assert variable in output and allowed in output, output
    assert "Traceback" not in output, output


def test_a_lease_shorter_than_the_call_deadline_fails_at_start() -> None:
    env = {"SLACK_CALL_TIMEOUT_S": "30", "ALERT_PLATFORM_DELIVERY_LEASE_S": "20"}
    code, output, seconds = run_cli(["topics", "list"], env)
    note("lease < Slack call deadline + margin", seconds)
    assert code == 1, output
    assert "ALERT_PLATFORM_DELIVERY_LEASE_S (20 s)" in output, output
    assert "SLACK_CALL_TIMEOUT_S (30 s) + 5 s" in output, output
    with pytest.raises(ConfigError):
        Settings.from_env(env)


# -- the sandbox process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A sandbox process started by the local stack with a secret token of its own."""
    base = local_settings(slack_bot_token=SANDBOX_TOKEN)
    stack = LocalStack(
        free_port_settings(tmp_path_factory.mktemp("config-sandbox"), base), die_with_parent=True
    )
    stack.up(["slack"])
    try:
        yield stack
    finally:
        stack.down(["slack"])


def test_the_sandbox_token_is_not_on_the_command_line(own_sandbox: LocalStack) -> None:
    started = time.monotonic()
    process = own_sandbox.process("slack")
    pid = process.pid
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    places = [process.pid_path.read_text(), cmdline, ps, process.log_path.read_text()]
    leaks = count_leaks("sandbox pid file/command line/ps/log", [SANDBOX_TOKEN], *places)
    # The token did reach the sandbox (through its environment): it accepts it, and only it.
    url = own_sandbox.settings.slack_api_url
    assert WebClient(token=SANDBOX_TOKEN, base_url=url, timeout=10).auth_test()["ok"] is True
    with pytest.raises(SlackApiError) as refused:
        WebClient(token=LOCAL_SLACK_TOKEN, base_url=url, timeout=10).auth_test()
    note("sandbox token off the command line", time.monotonic() - started)
    assert refused.value.response["error"] == "invalid_auth"
    assert "alert_platform.local.sandbox" in cmdline
    assert leaks == 0, places


def _request(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)  # a "Host" header replaces ours
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_the_control_api_refuses_foreign_hosts_and_non_json(own_sandbox: LocalStack) -> None:
    started = time.monotonic()
    port = own_sandbox.settings.slack_sandbox_port
    control = SandboxControl(own_sandbox.settings.slack_api_url)
    control.reset()
    client = WebClient(token=SANDBOX_TOKEN, base_url=own_sandbox.settings.slack_api_url)
    client.chat_postMessage(channel="#alerts-ops", text="kept")  # slack-sdk: form or JSON body
    evil_user = json.dumps({"id": "UEVIL0001", "email": "evil@example.com", "name": "x"})
    refusals = [
        ("POST", "/_sandbox/reset", b"{}", {"Content-Type": "text/plain"}, 415),
        ("POST", "/_sandbox/reset", b"", {}, 415),
        ("POST", "/_sandbox/users", b"id=UEVIL0001&email=evil%40example.com&name=x",
         {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ("POST", "/_sandbox/users", evil_user.encode(), {"Content-Type": "text/plain"}, 415),
        ("POST", "/_sandbox/users", evil_user.encode(),
         {"Content-Type": "application/json", "Host": "attacker.example"}, 403),
        ("POST", "/_sandbox/reset", b"{}",
         {"Content-Type": "application/json", "Host": f"127.0.0.1.attacker.example:{port}"}, 403),
        ("GET", "/_sandbox/messages", b"", {"Host": f"rebound.example:{port}"}, 403),
    ]  # fmt: skip
    answers = [
        (_request(port, method, path, body, headers)[0], status)
        for method, path, body, headers, status in refusals
    ]
    kept = [m["text"] for m in control.messages()]
    with pytest.raises(SlackApiError) as unknown:
        client.users_lookupByEmail(email="evil@example.com")
    # JSON from a loopback Host (each spelling) is still served.
    allowed = [
        _request(port, "GET", "/_sandbox/health", b"", {"Host": host})[0]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}")
    ]
    status, body = _request(
        port,
        "POST",
        "/_sandbox/channels",
        json.dumps({"id": "CCONFIG01", "name": "config-cases"}).encode(),
        {"Content-Type": "application/json; charset=utf-8", "Host": f"localhost:{port}"},
    )
    note("sandbox control API: foreign Host / non-JSON", time.monotonic() - started)
    assert [got for got, _ in answers] == [want for _, want in answers]
    assert kept == ["kept"]  # no refused reset went through
    assert unknown.value.response["error"] == "users_not_found"  # no refused user was added
    assert allowed == [200, 200, 200, 200]
    assert status == 200 and body["channel"]["id"] == "CCONFIG01"


# -- the dev Dagster instance --------------------------------------------------------------------


@pytest.fixture
def dagster_database() -> Iterator[str]:
    """A fresh PostgreSQL database; its URL carries a password (trust auth ignores it)."""
    name = f"config_cases_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_ADMIN_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://postgres:{PG_PASSWORD}@127.0.0.1:5432/{name}"
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def test_the_dev_dagster_yaml_holds_no_password(
    dagster_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance

    started = time.monotonic()
    home = prepare_dagster_home(tmp_path, dagster_database)
    written = "\n".join(p.read_text() for p in home.rglob("*") if p.is_file())
    leaks = count_leaks("dev dagster.yaml", [PG_PASSWORD, dagster_database], written)
    monkeypatch.setenv("ALERT_PLATFORM_DAGSTER_POSTGRES_URL", dagster_database)
    instance = DagsterInstance.from_config(str(home))
    try:
        storage = type(instance.run_storage).__name__
        runs = instance.get_runs_count()
    finally:
        instance.dispose()
    note("dev dagster.yaml with a Postgres URL", time.monotonic() - started)
    assert leaks == 0, written
    assert written == dagster_instance_yaml(dagster_database)
    assert storage == "PostgresRunStorage" and runs == 0
