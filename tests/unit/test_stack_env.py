"""`alert-platform stack env`: the local profile as shell exports another shell can eval."""

import shlex

import pytest

from alert_platform.cli import main
from alert_platform.local.profile import LOCAL_ENVIRONMENT, local_settings_from_env
from alert_platform.settings import Settings


def test_stack_env_prints_the_local_profile_as_exports(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "env"]) == 0
    exported: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        keyword, assignment = line.split(" ", 1)
        assert keyword == "export"
        [(name, value)] = [tuple(shlex.split(assignment)[0].split("=", 1))]
        exported[name] = value
    assert exported == dict(LOCAL_ENVIRONMENT)
    # What a shell that evaluated them gets: the sandbox, not Slack; the local broker profile.
    settings = Settings.from_env(exported)
    assert settings.slack_api_url == local_settings_from_env({}).slack_api_url
    assert settings.slack_api_url != Settings.from_env({}).slack_api_url
    assert settings.kafka_profile == "local"
