"""Settings: production defaults when nothing is set, the local profile set explicitly, no
environment read by ``Settings(...)``, secrets typed as secrets, every copy checked again."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import SecretStr

from alert_platform.bigquery.client import make_bigquery_client
from alert_platform.local.profile import (
    LOCAL_ENVIRONMENT,
    local_environment,
    local_settings,
    local_settings_from_env,
)
from alert_platform.settings import (
    LOCAL_KAFKA_PROFILE,
    LOCAL_SLACK_TOKEN,
    ConfigError,
    Settings,
    process_environment,
)
from alert_platform.slack.client import SlackClientConfigError, make_web_client

# -- production by default ---------------------------------------------------------------------


def test_nothing_set_means_production() -> None:
    settings = Settings.from_env({})
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.kafka_profile == "default"
    assert settings.slack_bot_token.get_secret_value() == ""
    assert (settings.bigquery_api_endpoint, settings.bigquery_project) == ("", "")
    assert settings.bootstrap_servers == "127.0.0.1:9092"  # Kafka's conventional default
    config = settings.kafka_client_config()
    assert not set(LOCAL_KAFKA_PROFILE) & set(config), config
    assert Settings() == settings


def test_a_production_process_without_slack_api_url_talks_to_slack() -> None:
    settings = Settings.from_env({"SLACK_BOT_TOKEN": "xoxb-production-1234"})
    client = make_web_client(settings)
    assert client.base_url == "https://slack.com/api/"
    assert client.token == "xoxb-production-1234"


def test_no_token_is_a_clear_error_naming_slack_bot_token_not_a_post() -> None:
    with pytest.raises(SlackClientConfigError, match="SLACK_BOT_TOKEN"):
        make_web_client(Settings.from_env({}))


def test_bigquery_without_a_project_names_bigquery_project() -> None:
    with pytest.raises(ConfigError, match="BIGQUERY_PROJECT"):
        make_bigquery_client(Settings.from_env({}))


# -- the local profile -------------------------------------------------------------------------


def test_the_local_profile_names_every_stand_in() -> None:
    settings = local_settings()
    assert settings.kafka_profile == "local"
    assert settings.slack_api_url == "http://127.0.0.1:8025/api/"
    assert settings.slack_bot_token.get_secret_value() == LOCAL_SLACK_TOKEN
    assert settings.bigquery_api_endpoint == "http://127.0.0.1:9050"
    assert settings.bigquery_project == "local-dev"
    assert settings.kafka_client_config()["fetch.wait.max.ms"] == "10"
    assert local_settings(dedup_window_hours=3).dedup_window_hours == 3


def test_a_kafka_property_set_explicitly_wins_over_the_local_kafka_profile() -> None:
    settings = Settings.from_env(
        {"ALERT_PLATFORM_KAFKA_PROFILE": "local", "KAFKA_SESSION_TIMEOUT_MS": "2000"}
    )
    config = settings.kafka_client_config()
    assert config["session.timeout.ms"] == "2000"
    assert config["fetch.wait.max.ms"] == LOCAL_KAFKA_PROFILE["fetch.wait.max.ms"]
    assert settings.kafka_client_config(**{"session.timeout.ms": 900})["session.timeout.ms"] == 900


def test_the_environment_wins_over_the_local_profile_and_empty_means_unset() -> None:
    settings = local_settings_from_env(
        {"SLACK_API_URL": "http://127.0.0.1:9999/api/", "BIGQUERY_PROJECT": ""}
    )
    assert settings.slack_api_url == "http://127.0.0.1:9999/api/"
    assert settings.bigquery_project == "local-dev"
    assert settings.kafka_profile == "local"
    merged = local_environment({"SLACK_API_URL": "", "OTHER": "1"})
    assert merged["SLACK_API_URL"] == LOCAL_ENVIRONMENT["SLACK_API_URL"] and merged["OTHER"] == "1"


def test_the_local_profile_is_read_only() -> None:
    with pytest.raises(TypeError):
        LOCAL_ENVIRONMENT["SLACK_API_URL"] = "https://slack.com/api/"  # type: ignore[index]


# -- where values come from --------------------------------------------------------------------


def test_constructing_settings_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:1/api/")
    monkeypatch.setenv("ALERT_DEDUP_WINDOW_HOURS", "-1")  # would fail if it were read
    assert Settings().slack_api_url == "https://slack.com/api/"
    assert Settings(dedup_window_hours=5).dedup_window_hours == 5
    monkeypatch.setenv("ALERT_DEDUP_WINDOW_HOURS", "7")
    assert Settings.from_env().slack_api_url == "http://127.0.0.1:1/api/"
    assert Settings.from_env().dedup_window_hours == 7


def test_partition_starts_and_dagster_home_are_settings() -> None:
    settings = Settings.from_env(
        {
            "ALERT_PLATFORM_PARTITIONS_START": "2026-01-01-00:00",
            "ALERT_PLATFORM_ONBOARDING_START": "2026-01-02",
            "DAGSTER_HOME": "/srv/dagster",
        }
    )
    assert settings.partitions_start == "2026-01-01-00:00"
    assert settings.onboarding_start == "2026-01-02"
    assert settings.dagster_home == "/srv/dagster"
    assert Settings().partitions_start == "2026-11-01-00:00"


def test_process_environment_adds_to_this_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_PLATFORM_TEST_MARK", "kept")
    env = process_environment(DAGSTER_HOME="/tmp/home")
    assert env["ALERT_PLATFORM_TEST_MARK"] == "kept" and env["DAGSTER_HOME"] == "/tmp/home"


# -- secrets and checked copies -----------------------------------------------------------------


def test_the_token_is_a_secret_and_a_str_is_coerced() -> None:
    settings = Settings(slack_bot_token="xoxb-coerced-5678")
    assert isinstance(settings.slack_bot_token, SecretStr)
    assert settings.slack_bot_token.get_secret_value() == "xoxb-coerced-5678"
    copy = settings.with_overrides(slack_bot_token=SecretStr("xoxb-other-9012"))
    assert copy.slack_bot_token.get_secret_value() == "xoxb-other-9012"
    assert "xoxb-coerced-5678" not in repr(settings) + str(settings)
    assert "xoxb-coerced-5678" not in repr(settings.model_dump())


def test_with_overrides_checks_each_value_and_the_cross_rules() -> None:
    settings = Settings()
    with pytest.raises(ConfigError, match=r"ALERT_DEDUP_WINDOW_HOURS must be an integer from 1"):
        settings.with_overrides(dedup_window_hours=0)
    with pytest.raises(ConfigError, match=r"SLACK_CALL_TIMEOUT_S \(60 s\) \+ 5 s"):
        settings.with_overrides(slack_call_timeout_s=60)
    with pytest.raises(ConfigError, match="slack_api_uri is not a setting"):
        settings.with_overrides(slack_api_uri="https://slack.com/api/")
    with pytest.raises(ConfigError, match="ALERT_PLATFORM_KAFKA_PROFILE must be"):
        settings.with_overrides(kafka_profile="staging")
    assert settings.with_overrides(start_policy=" Earliest ").start_policy == "earliest"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.dedup_window_hours = 1  # type: ignore[misc]


def test_a_bad_secret_value_is_not_shown_in_the_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(ledger_url=["postgresql://u:hunter2@h/db"])  # type: ignore[arg-type]
    assert "ALERT_LEDGER_URL" in str(caught.value) and "hunter2" not in str(caught.value)


def test_settings_import_nothing_of_the_kafka_package() -> None:
    code = (
        "import sys, alert_platform.settings, alert_platform.local.profile\n"
        "print(sorted(m for m in sys.modules if m.startswith('alert_platform.kafka')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
