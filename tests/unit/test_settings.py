"""Settings: secrets redacted, the librdkafka pass-through checked, every number range-checked."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException, Producer

from alert_platform import librdkafka_properties as properties
from alert_platform.kafka.clients import admin_config, consumer_config, producer_config
from alert_platform.local.dev import dagster_instance_yaml, platform_environment
from alert_platform.settings import (
    ConfigError,
    KafkaConfig,
    Settings,
    is_secret_property,
    redact_url,
)

TOKEN = "xoxb-unit-secret-token-1618"
SECRETS = {
    "KAFKA_SASL_PASSWORD": "unit-sasl-password-2718",
    "KAFKA_SSL_KEY_PASSWORD": "unit-ssl-key-password-3141",
    "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "unit-oauth-secret-5772",
    "KAFKA_SSL_KEYSTORE_PASSWORD": "unit-keystore-password-1414",
    "KAFKA_SSL_KEY_PEM": "-----BEGIN PRIVATE KEY-----unit-key-1732",
}
LEDGER_PASSWORD = "unit-ledger-password-6931"
DAGSTER_PASSWORD = "unit-dagster-password-4669"


def secret_env() -> dict[str, str]:
    return {
        **SECRETS,
        "KAFKA_SASL_USERNAME": "unit-user",
        "SLACK_BOT_TOKEN": TOKEN,
        "ALERT_LEDGER_URL": f"postgresql+psycopg2://ledger:{LEDGER_PASSWORD}@db.example:5432/a",
        "ALERT_PLATFORM_DAGSTER_POSTGRES_URL": f"postgresql://dg:{DAGSTER_PASSWORD}@db.example/d",
    }


def all_secrets() -> list[str]:
    return [*SECRETS.values(), TOKEN, LEDGER_PASSWORD, DAGSTER_PASSWORD]


# -- secrets -----------------------------------------------------------------------------------


def test_repr_and_str_show_no_secret_but_keep_the_rest() -> None:
    settings = Settings.from_env(secret_env())
    for text in (repr(settings), str(settings), f"{settings}", repr(settings.kafka)):
        leaked = [secret for secret in all_secrets() if secret in text]
        assert leaked == [], text
    text = repr(settings)
    assert "sasl.username': 'unit-user'" in text
    assert "ledger:***@db.example:5432/a" in text and "dg:***@db.example/d" in text
    assert "slack_bot_token='***'" in text


def test_redaction_does_not_change_the_values_clients_get() -> None:
    settings = Settings.from_env(secret_env())
    assert settings.slack_bot_token.get_secret_value() == TOKEN
    assert settings.ledger_url.endswith(f":{LEDGER_PASSWORD}@db.example:5432/a")
    assert settings.kafka["sasl.password"] == SECRETS["KAFKA_SASL_PASSWORD"]
    assert producer_config(settings)["ssl.key.password"] == SECRETS["KAFKA_SSL_KEY_PASSWORD"]
    assert isinstance(settings.with_overrides(kafka={"a.b": "c"}).kafka, KafkaConfig)


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
        "some.future.secret",
        "some.future.password",
    ],
)
def test_secret_properties(name: str) -> None:
    assert is_secret_property(name)


@pytest.mark.parametrize(
    "name", ["bootstrap.servers", "sasl.username", "ssl.key.location", "client.id"]
)
def test_plain_properties_are_shown(name: str) -> None:
    assert not is_secret_property(name)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql+psycopg2://u:pw@h/db?sslmode=require",
            "postgresql+psycopg2://u:***@h/db?sslmode=require",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=x", "postgresql://u@h/db?password=***&sslmode=x"),
        ("sqlite:////tmp/ledger.sqlite3", "sqlite:////tmp/ledger.sqlite3"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_bad_port_error_does_not_print_the_url_password() -> None:
    settings = Settings().with_overrides(slack_api_url="http://u:hunter2@127.0.0.1:99999/api/")
    with pytest.raises(ConfigError, match=r"SLACK_API_URL.*1 to 65535") as caught:
        _ = settings.slack_sandbox_port
    assert "hunter2" not in str(caught.value)


def test_dev_dagster_yaml_references_the_postgres_url_by_name() -> None:
    settings = Settings.from_env(secret_env())
    text = dagster_instance_yaml(settings.dagster_postgres_url)
    assert DAGSTER_PASSWORD not in text and "db.example" not in text
    assert "env: ALERT_PLATFORM_DAGSTER_POSTGRES_URL" in text
    assert "postgres" not in dagster_instance_yaml(None)
    env = platform_environment(settings, settings.data_dir / "dagster")
    assert env["ALERT_PLATFORM_DAGSTER_POSTGRES_URL"] == settings.dagster_postgres_url


# -- the librdkafka pass-through ---------------------------------------------------------------


def test_kafka_variables_that_name_properties_pass_through() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "broker:9093",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_LOG_LEVEL": "3",  # log_level: a property with an underscore
            "KAFKA_MESSAGE_TIMEOUT_MS": "5000",  # a topic property
            "KAFKA_CLIENT_ID": "",  # empty: ignored
        }
    )
    assert dict(settings.kafka) == {
        "bootstrap.servers": "broker:9093",
        "security.protocol": "SASL_SSL",
        "log_level": "3",
        "message.timeout.ms": "5000",
    }


@pytest.mark.parametrize(
    "variable",
    [
        "KAFKA_PORT",
        "KAFKA_SERVICE_HOST",
        "KAFKA_SERVICE_PORT",
        "KAFKA_SERVICE_PORT_BROKER",
        "KAFKA_SERVICE_PORT_TCP_CLIENT",
        "KAFKA_PORT_9092_TCP",
        "KAFKA_PORT_9092_TCP_ADDR",
        "KAFKA_PORT_9092_TCP_PORT",
        "KAFKA_PORT_9092_TCP_PROTO",
        "KAFKA_PORT_29092_UDP_ADDR",
        "KAFKA_PORT_7_SCTP",
        "KAFKA_UI_SERVICE_HOST",  # a Service named kafka-ui
        "KAFKA_CONNECT_PORT_8083_TCP_ADDR",
    ],
)
def test_kubernetes_service_variables_are_ignored(variable: str) -> None:
    settings = Settings.from_env({variable: "tcp://10.0.0.11:9092", "KAFKA_CLIENT_ID": "x"})
    assert dict(settings.kafka) == {"bootstrap.servers": "127.0.0.1:9092", "client.id": "x"}


@pytest.mark.parametrize("variable", ["KAFKA_HOME", "KAFKA_BOOTSTRAP_SERVER", "KAFKA_PORTS"])
def test_an_unknown_kafka_variable_is_a_clear_error(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: "secret-looking-value"})
    message = str(caught.value)
    assert message.startswith(f"{variable}:") and "not a librdkafka" in message, message
    assert "secret-looking-value" not in message
    assert Settings.from_env({variable: ""}).kafka == Settings().kafka  # empty: ignored


def test_the_explicit_prefix_passes_any_property_unchecked() -> None:
    settings = Settings.from_env(
        {
            "ALERT_PLATFORM_KAFKA_PROPERTY_SOME_NEW_PROPERTY": "1",
            "ALERT_PLATFORM_KAFKA_PROPERTY_CLIENT_ID": "explicit",
            "KAFKA_CLIENT_ID": "implicit",
        }
    )
    assert settings.kafka["some.new.property"] == "1"
    assert settings.kafka["client.id"] == "explicit"


def test_no_librdkafka_property_looks_like_a_service_variable() -> None:
    variables = [f"KAFKA_{name.upper().replace('.', '_')}" for name in properties.ALL]
    assert [v for v in variables if properties.is_service_link_variable(v)] == []
    assert len(set(variables)) == len(properties.ALL)  # one property per variable name


def _librdkafka_knows(name: str) -> bool:
    try:
        Producer({name: "not-a-valid-value", "bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    except KafkaException as exc:
        return "No such configuration property" not in str(exc)
    except (TypeError, ValueError):  # confluent-kafka checks the type of some properties itself
        return True
    return True


def test_every_listed_property_is_known_to_the_installed_librdkafka() -> None:
    unknown = [name for name in sorted(properties.ALL) if not _librdkafka_knows(name)]
    assert unknown == []
    assert not _librdkafka_knows("home")  # the check itself can fail
    assert len(properties.GLOBAL) > 140 and len(properties.TOPIC) > 15


def test_client_configs_drop_properties_of_the_other_client_kind() -> None:
    settings = Settings.from_env({"KAFKA_LINGER_MS": "50", "KAFKA_FETCH_MAX_BYTES": "1048576"})
    assert "linger.ms" not in consumer_config(settings)
    assert consumer_config(settings)["fetch.max.bytes"] == "1048576"
    assert producer_config(settings)["linger.ms"] == "50"
    assert "fetch.max.bytes" not in producer_config(settings)
    assert "fetch.max.bytes" not in admin_config(settings)


# -- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("ALERT_DEDUP_WINDOW_HOURS", "-1", "from 1 to 8760"),
        ("ALERT_DEDUP_WINDOW_HOURS", "0", "from 1 to 8760"),
        ("ALERT_DEDUP_WINDOW_HOURS", "100000", "from 1 to 8760"),
        ("DAGSTER_PORT", "0", "from 1 to 65535"),
        ("DAGSTER_PORT", "70000", "from 1 to 65535"),
        ("SLACK_CHANNEL_RATE_PER_S", "0", "from 0.001 to 10000"),
        ("SLACK_CHANNEL_RATE_PER_S", "1e9", "from 0.001 to 10000"),
        ("SLACK_CHANNEL_RATE_PER_S", "nan", "from 0.001 to 10000"),
        ("SLACK_CHANNEL_BURST", "0", "from 1 to 10000"),
        ("SLACK_CHANNEL_BURST", "10001", "from 1 to 10000"),
        ("ALERT_PLATFORM_DELIVERY_WORKERS", "0", "from 1 to 1024"),
        ("ALERT_PLATFORM_DELIVERY_WORKERS", "100000", "from 1 to 1024"),
        ("ALERT_EVENT_TIME_MAX_PAST_HOURS", "0", "from 1 to 87600"),
        ("ALERT_EVENT_TIME_MAX_FUTURE_MINUTES", "-5", "from 0 to 10080"),
        ("ALERT_MAX_AGE_HOURS", "0", "from 0.01 to 87600"),
        ("ALERT_PLATFORM_START_LOOKBACK_MINUTES", "-1", "from 0 to 525600"),
        ("SLACK_CALL_TIMEOUT_S", "inf", "from 1 to 300"),
        ("ALERT_PLATFORM_DELIVERY_LEASE_S", "5", "from 15 to 86400"),
        ("SLACK_RETRY_AFTER_MAX_S", "0", "from 1 to 3600"),
        ("ALERT_PLATFORM_RETRY_BACKOFF_BASE_S", "-1", "from 0 to 3600"),
        ("ALERT_OPS_REMINDER_MINUTES", "0", "from 1 to 10080"),
        ("ALERT_STATE_RETENTION_MARGIN_HOURS", "0", "from 1 to 87600"),
    ],
)
def test_out_of_range_numbers_name_the_variable_and_the_range(
    variable: str, value: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    assert variable in str(caught.value) and allowed in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("ALERT_DEDUP_WINDOW_HOURS", "8760", "dedup_window_hours", 8760),
        ("DAGSTER_PORT", "65535", "dagster_port", 65535),
        ("SLACK_CHANNEL_RATE_PER_S", "10000", "slack_channel_rate_per_s", 10000.0),
        ("SLACK_CHANNEL_BURST", "10000", "slack_channel_burst", 10000),
        ("ALERT_PLATFORM_DELIVERY_WORKERS", "1024", "delivery_max_workers", 1024),
    ],
)
def test_range_edges_are_accepted(variable: str, value: str, field: str, expected: float) -> None:
    assert getattr(Settings.from_env({variable: value}), field) == expected


@pytest.mark.parametrize("value", ["ten", "1.5"])
def test_non_integers_name_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="ALERT_DEDUP_WINDOW_HOURS must be an integer"):
        Settings.from_env({"ALERT_DEDUP_WINDOW_HOURS": value})


def test_lease_shorter_than_the_call_deadline_plus_margin_is_refused() -> None:
    env = {"SLACK_CALL_TIMEOUT_S": "30", "ALERT_PLATFORM_DELIVERY_LEASE_S": "34"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "ALERT_PLATFORM_DELIVERY_LEASE_S (34 s)" in message
    assert "SLACK_CALL_TIMEOUT_S (30 s) + 5 s" in message
    assert (
        Settings.from_env({**env, "ALERT_PLATFORM_DELIVERY_LEASE_S": "35"}).delivery_lease_s == 35
    )
