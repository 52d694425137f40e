"""Alerts older than the maximum alert age (``ALERT_MAX_AGE_HOURS``, 24 h): live delivery marks
them ``stale`` and posts nothing; only explicit backfills (``alert-platform backfill --local
--deliver``, the alerts asset without ``ranges``) post them, and their summaries count them.
On a private broker and the session Slack sandbox (fixtures as in test_backfill.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import DagsterInstance

from alert_platform import topics
from alert_platform.cli import main
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.kafka.clients import make_producer
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.integration.flow_helpers import (
    FlowOptions,
    latest_materialization_metadata,
    posted_alert_ids,
    tick_and_run,
    tick_delivery,
)
from tests.integration.test_backfill import (
    ALERTS_ASSET,
    failures_of_new_orgs,
    run_alerts_backfill,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flow_options() -> FlowOptions:
    """Delivery through the sensor (inline delivery off); only the test's Dagster instance."""
    return FlowOptions(inline_delivery=False, clear_dagster_home=True)


def produce_at(
    settings: Settings, events: list[tuple[str, dict[str, Any]]], when: datetime
) -> None:
    """``events`` with event time and Kafka timestamp ``when``."""
    producer = make_producer(settings)
    stamp = int(when.timestamp() * 1000)
    for org_id, event in events:
        event["time"] = when.isoformat().replace("+00:00", "Z")
        value = json.dumps(event).encode()
        producer.produce(topics.NOTIFICATIONS, key=org_id.encode(), value=value, timestamp=stamp)
    assert producer.flush(10) == 0


def test_live_delivery_marks_old_alerts_stale_and_only_backfills_post_them(
    platform_env: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = platform_env
    assert settings.max_alert_age_hours == 24
    hour = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    cli_when, asset_when = hour - timedelta(hours=30), hour - timedelta(hours=27)
    cli_events, cli_ids = failures_of_new_orgs(settings, "stale-cli", 3)
    asset_events, asset_ids = failures_of_new_orgs(settings, "stale-asset", 2)
    produce_at(settings, cli_events, cli_when)
    produce_at(settings, asset_events, asset_when)
    with DeliveryLedger(settings.effective_ledger_url) as ledger:
        stale_before = ledger.count_by_state().get("stale", 0)

    # Live: enriched, then refused by delivery as older than 24 h; nothing reaches Slack.
    _tailed, runs = tick_and_run("connector_failure_tail", instance, None)
    assert runs and all(run.success for run in runs)
    tick_delivery(instance)
    assert not (cli_ids | asset_ids) & set(posted_alert_ids(sandbox))
    with DeliveryLedger(settings.effective_ledger_url) as ledger:
        stale = ledger.count_by_state().get("stale", 0) - stale_before
    assert stale == len(cli_ids) + len(asset_ids)

    # The CLI's explicit backfill posts them and says how many were stale.
    window = [
        "--start",
        (cli_when - timedelta(seconds=5)).isoformat(),
        "--end",
        (cli_when + timedelta(seconds=5)).isoformat(),
    ]
    base = ["backfill", "--local", *window, "--pipeline", "connector_failure", "--deliver"]
    assert main([*base, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delivery"]["stale_posted"] == len(cli_ids) == out["delivery"]["delivered"]
    assert sorted(set(posted_alert_ids(sandbox)) & (cli_ids | asset_ids)) == sorted(cli_ids)

    # The asset's backfill mode (a Dagster backfill of the hour) delivers its own alerts, stale
    # ones included, also with inline delivery off, and counts them in its metadata.
    run_alerts_backfill(instance, asset_when.strftime("%Y-%m-%d-%H:00"))
    metadata = latest_materialization_metadata(instance, ALERTS_ASSET)
    assert metadata["mode"] == "backfill"
    delivered = latest_materialization_metadata(instance, "connector_failure_deliveries")
    assert delivered["mode"] == "backfill" and delivered["inline_delivery"] == "done"
    assert delivered["stale_posted"] == len(asset_ids)
    posted = posted_alert_ids(sandbox)
    assert sorted(set(posted) & (cli_ids | asset_ids)) == sorted(cli_ids | asset_ids)
    assert len(posted) == len(set(posted))
    # A second CLI run posts nothing more.
    assert main(base) == 0
    assert "stale_posted 0" in capsys.readouterr().out
