"""`alert-platform dev` as a user runs it: stack, topics, seed, Dagster daemon, demo alerts in the
Slack sandbox within seconds, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from alert_platform.local.demo import build_demo_data
from alert_platform.local.ports import find_free_port, port_is_free
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.stack import free_port_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def expected_demo_alerts(event_count: int) -> int:
    demo = build_demo_data(event_count)
    alerts = set()
    for org_id, event in demo.events:
        labels = json.loads(event["data"])["labels"]
        if labels["connector_old_status"] == "Provisioning" and org_id in demo.assignments:
            alerts.add(f"{org_id}-{labels['env_id']}-{labels['connector_id']}")
    return len(alerts)


def alert_ids(sandbox: SandboxControl) -> list[str]:
    """Alert ids of the alerts posted (ops-channel notices carry no alert metadata)."""
    return [
        m["metadata"]["event_payload"]["alert_id"]
        for m in sandbox.messages()
        if (m.get("metadata") or {}).get("event_type") == "alert_platform_alert"
    ]


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dev exited early ({process.returncode}) waiting for {what}")
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_dev_runs_the_demo_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    settings = free_port_settings(tmp_path / "data")
    dagster_port = find_free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SLACK_API_URL": settings.slack_api_url,
        "BIGQUERY_API_ENDPOINT": settings.bigquery_api_endpoint,
        "DAGSTER_PORT": str(dagster_port),
        "ALERT_PLATFORM_MODE": "stream",  # dev's default (the test session's is batch)
    }
    env.pop("SLACK_BOT_TOKEN", None)
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "alert_platform.cli", "dev", "--data-dir", str(settings.data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sandbox = SandboxControl(settings.slack_api_url)
    expected = expected_demo_alerts(20)
    try:
        wait_for(
            lambda: "Press Ctrl-C" in (tmp_path / "dev.log").read_text(), 240, "banner", process
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{dagster_port}/server_info") as answer:
            assert answer.status == 200
        # The sensors pick the demo events up and the alerts reach Slack, each once.
        wait_for(lambda: len(alert_ids(sandbox)) >= expected, 120, "demo alerts", process)
        assert "Stream workers up" in (tmp_path / "dev.log").read_text()
        # Stream mode: one more event is an alert in Slack well within a second or two.
        from alert_platform.local.demo import produce_events
        from tests.integration.flow_helpers import connector_status_event

        org_id = next(iter(build_demo_data(20).assignments))
        event, _ = connector_status_event(org_id, 1, tag="dev-live")
        produced = time.monotonic()
        produce_events(settings, [(org_id, event)])
        wait_for(lambda: len(alert_ids(sandbox)) >= expected + 1, 30, "the live alert", process)
        took = time.monotonic() - produced
        assert took < 3.0, f"the live alert took {took:.2f} s"
        time.sleep(8)  # a later duplicate would show up here
        posted = alert_ids(sandbox)
        assert len(posted) == len(set(posted)) == expected + 1
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    output = (tmp_path / "dev.log").read_text()
    assert "Stopped Dagster and the local stack." in output
    for port in (settings.kafka_port, settings.slack_sandbox_port, settings.bigquery_port):
        assert port_is_free(port), f"port {port} still in use after dev stopped"
    assert port_is_free(dagster_port)
    leftovers = subprocess.run(
        ["pgrep", "-f", str(settings.data_dir)], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == [], f"processes left behind: {leftovers}"
