"""Backfills through Dagster, in process, on a private broker and the session Slack sandbox.

A Slack outage leaves alerts undelivered; a backfill of the hour (the alerts job without
``ranges``) re-derives them, and delivery posts exactly the missing ones. A backfill also finds
events no enrichment run ever read (absent from the run index). The CLI submits a real Dagster
asset backfill (run here by the backfill daemon's own iteration, in process) or runs locally.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance

from alert_platform import topics
from alert_platform.backfill import hour_partition_keys, partition_key_start
from alert_platform.cli import main
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.kafka.tailing import TailCursor
from alert_platform.local.demo import (
    build_demo_data,
    produce_events,
    produce_lookup_tables,
    slack_workspace,
)
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from sensors.topic_tail import current_hour_partition, range_run_config
from tests.integration.flow_helpers import (
    FlowOptions,
    alert_ids_on_topic,
    connector_failure_alert_id,
    connector_status_event,
    expected_alert_ids,
    latest_materialization_metadata,
    posted_alert_ids,
    repo,
    tick_and_run,
    tick_delivery,
    topic_records,
)

pytestmark = pytest.mark.integration

ALERTS_JOB = "connector_failure_alerts_job"
ALERTS_ASSET = "connector_failure_alerts"
DELIVERIES_ASSET = "connector_failure_deliveries"
DELIVERY_JOB = "slack_delivery_job"


@pytest.fixture(scope="module")
def flow_options() -> FlowOptions:
    """These tests exercise the delivery sensor's path: enrichment must not deliver inline; and
    only the Dagster instance a test hands over is used."""
    return FlowOptions(inline_delivery=False, clear_dagster_home=True)


# -- helpers -------------------------------------------------------------------------------------


def stay_within_the_hour(margin_s: float = 90.0) -> None:
    """Events produced now must land in the hour a backfill of the current partition covers:
    close to the end of an hour, wait for the next one."""
    now = datetime.now(UTC)
    next_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    left = (next_hour - now).total_seconds()
    if left < margin_s:
        time.sleep(left + 1)


def run_alerts_backfill(instance: DagsterInstance, partition_key: str):
    """What a backfill of one partition runs: the alerts job with no ``ranges`` config."""
    _defs, repository = repo()
    result = repository.get_job(ALERTS_JOB).execute_in_process(
        instance=instance, partition_key=partition_key
    )
    assert result.success
    return result


def deliver_ranges(instance: DagsterInstance, ranges: list[OffsetRange]):
    _defs, repository = repo()
    config = range_run_config("slack_deliveries", [r.as_dict() for r in ranges])
    result = repository.get_job(DELIVERY_JOB).execute_in_process(
        run_config=config, instance=instance
    )
    assert result.success
    return result


def parse_range(text: str) -> OffsetRange:
    topic, partition, span = text.rsplit(":", 2)
    start, end = span.split("-")
    return OffsetRange(topic, int(partition), int(start), int(end))


def assign(settings: Settings, org_ids: list[str]) -> None:
    """Assignments to a member who has a Slack user, so the alerts go to a DM."""
    user = slack_workspace()["users"][0]
    producer = make_producer(settings)
    for org_id in org_ids:
        row = {
            "org_id": org_id,
            "csdr_email": user["email"],
            "csdr_name": user["name"],
            "account_name": f"Account {org_id}",
        }
        producer.produce(
            topics.CSDR_ASSIGNMENT, key=org_id.encode(), value=json.dumps(row).encode()
        )
    assert producer.flush(10) == 0


def failures_of_new_orgs(
    settings: Settings, name: str, count: int
) -> tuple[list[tuple[str, dict[str, Any]]], set[str]]:
    """``count`` new orgs ``org-<name>-<uuid>-<i>``, assigned (see ``assign``) with the lookup
    tables produced; returns one provisioning-failure event per org, not produced yet, and the
    alert ids they should give."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    org_ids = [f"org-{tag}-{i}" for i in range(count)]
    assign(settings, org_ids)
    produce_lookup_tables(settings, build_demo_data(event_count=0))
    events, ids = [], set()
    for number, org_id in enumerate(org_ids):
        event, labels = connector_status_event(org_id, number, tag=tag)
        events.append((org_id, event))
        ids.add(connector_failure_alert_id(org_id, labels))
    return events, ids


def event_positions(settings: Settings, event_ids: set[str]) -> dict[str, tuple[int, int]]:
    found = {}
    for record in topic_records(settings, topics.NOTIFICATIONS):
        try:
            event_id = json.loads(record.value).get("id")
        except (TypeError, ValueError, AttributeError):
            continue
        if event_id in event_ids:
            found[event_id] = (record.partition, record.offset)
    return found


# -- (a) outage, then backfill -------------------------------------------------------------------


def test_backfill_after_a_slack_outage_delivers_every_alert_exactly_once(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance
) -> None:
    settings = platform_env
    stay_within_the_hour()
    demo = build_demo_data(event_count=40, seed=23)
    produce_lookup_tables(settings, demo)
    produce_events(settings, demo.events)
    expected = expected_alert_ids(demo, demo.events)
    assert len(expected) >= 5

    # Live enrichment: the tail sensor's runs index what they read.
    _tail, runs = tick_and_run("connector_failure_tail", instance, None)
    assert runs and all(run.success for run in runs)
    assert set(alert_ids_on_topic(settings)) == expected

    # Delivery during an outage: one partition's alerts get through (a manual run), then Slack
    # revokes the token and the sensor's delivery run fails having posted nothing more.
    consumer = make_consumer(settings)
    ends = probe_end_offsets(consumer, topics.SLACK_MESSAGES)
    consumer.close()
    first = min(p for p, end in ends.items() if end > 0)
    deliver_ranges(instance, [OffsetRange(topics.SLACK_MESSAGES, first, 0, ends[first])])
    sandbox.revoke_token()
    outage_tick, failed_runs = tick_delivery(instance, raise_on_error=False)
    assert failed_runs and not any(run.success for run in failed_runs)
    delivered_before = posted_alert_ids(sandbox)
    assert set(delivered_before) < expected, "the outage must leave alerts undelivered"
    assert len(delivered_before) == len(set(delivered_before))

    # Slack is back. Backfill the hour: the alerts job with no ranges re-derives its window.
    sandbox.revoke_token(False)
    partition = current_hour_partition()
    run_alerts_backfill(instance, partition)
    metadata = latest_materialization_metadata(instance, ALERTS_ASSET)
    assert metadata["mode"] == "backfill"
    assert metadata["located_by"] == "run_index"  # the local broker answers offsets_for_times 0
    window_start = partition_key_start(partition)
    assert metadata["window"].startswith(window_start.isoformat())
    assert metadata["alerts"] >= len(expected)
    assert sorted(alert_ids_on_topic(settings)).count(min(expected)) == 2  # produced again

    # Delivering what the backfill wrote posts exactly the alerts the outage swallowed.
    written = [
        parse_range(text)
        for text in metadata["written_ranges"]
        if text.startswith(f"{topics.SLACK_MESSAGES}:")
    ]
    assert written
    deliver_ranges(instance, written)
    assert posted_alert_ids(sandbox) == sorted(expected)

    # The delivery sensor then retries the failed ranges and tails the new ones: nothing twice.
    # Its failed ranges were all delivered by the backfill, so it settles them without a run.
    again, retries = tick_and_run("slack_delivery_tail", instance, outage_tick.cursor)
    assert all(run.success for run in retries)
    assert TailCursor.from_json(again.cursor).pending == ()
    assert posted_alert_ids(sandbox) == sorted(expected)
    with DeliveryLedger(settings.effective_ledger_url) as ledger:
        assert ledger.count_by_state().get("delivered") == len(expected)


# -- (b) events no run ever read -----------------------------------------------------------------


def test_backfill_finds_events_missing_from_the_run_index(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance
) -> None:
    settings = platform_env
    stay_within_the_hour()
    seen_events, seen_ids = failures_of_new_orgs(settings, "seen", 3)
    unseen_events, unseen_ids = failures_of_new_orgs(settings, "unseen", 3)

    # Events read by a live run (indexed) ...
    produce_events(settings, seen_events)
    _tail, runs = tick_and_run("connector_failure_tail", instance, None)
    assert all(run.success for run in runs)
    # ... and events produced while no sensor ran: no run index entry covers them.
    produce_events(settings, unseen_events)
    positions = event_positions(settings, {event["id"] for _org, event in unseen_events})
    assert len(positions) == len(unseen_events)
    index = RunIndex(settings.effective_ledger_url)
    try:
        for partition, offset in positions.values():
            assert index.runs_for_offset(topics.NOTIFICATIONS, partition, offset) == []
    finally:
        index.close()
    assert not unseen_ids & set(alert_ids_on_topic(settings))

    run_alerts_backfill(instance, current_hour_partition())
    metadata = latest_materialization_metadata(instance, ALERTS_ASSET)
    assert metadata["mode"] == "backfill"
    assert metadata["located_by"] == "run_index"
    on_topic = set(alert_ids_on_topic(settings))
    assert unseen_ids <= on_topic and seen_ids <= on_topic
    # The unindexed offsets were scanned: every one lies in a source range of the backfill.
    source_ranges = [parse_range(text) for text in metadata["source_ranges"]]
    for partition, offset in positions.values():
        assert any(r.partition == partition and offset in r for r in source_ranges)


def test_local_backfill_runs_without_dagster_and_delivers(
    platform_env: Settings, sandbox: SandboxControl, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = platform_env
    stay_within_the_hour()
    events, ids = failures_of_new_orgs(settings, "local", 3)
    start = datetime.now(UTC) - timedelta(seconds=5)
    produce_events(settings, events)
    end = datetime.now(UTC) + timedelta(seconds=5)
    window = ["--start", start.isoformat(), "--end", end.isoformat()]
    base = ["backfill", "--local", *window, "--pipeline", "connector_failure", "--json"]

    assert main([*base, "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["dry_run"] and dry["pipelines"][0]["located_by"] == "run_index"
    assert dry["pipelines"][0]["source_ranges"]
    assert not ids & set(alert_ids_on_topic(settings)), "a dry run produces nothing"

    assert main([*base, "--deliver"]) == 0
    out = json.loads(capsys.readouterr().out)
    counts = out["pipelines"][0]
    assert counts["alerts"] >= len(ids) and counts["read"] >= len(ids)
    assert ids <= set(alert_ids_on_topic(settings))
    # The written ranges may also hold earlier alerts nobody delivered yet: posted too, once.
    assert out["delivery"]["delivered"] >= len(ids)
    posted = posted_alert_ids(sandbox)
    assert ids <= set(posted) and len(posted) == len(set(posted))

    # Human-readable output, a second time: everything is already delivered.
    assert main([*base[:-1], "--deliver"]) == 0
    text = capsys.readouterr().out
    assert "located by run_index" in text and "delivery: delivered 0," in text
    assert posted_alert_ids(sandbox) == posted


# -- (d) the CLI submits a real Dagster asset backfill ------------------------------------------

_SYNC_INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster._core.launcher.sync_in_memory_run_launcher
  class: SyncInMemoryRunLauncher
telemetry:
  enabled: false
"""


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(_SYNC_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _backfill_daemon_iterations(instance: DagsterInstance, backfill_id: str) -> Mapping:
    """Run the backfill daemon's loop body in process until the backfill is done."""
    import logging

    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    target = ModuleTarget(
        module_name="alert_platform.definitions",
        attribute=None,
        working_directory=str(Path(__file__).resolve().parents[2]),
        location_name="alert_platform",
    )
    logger = logging.getLogger("test_backfill_daemon")
    with create_test_daemon_workspace_context(target, instance) as workspace:
        for _ in range(10):
            list(execute_backfill_iteration(workspace, logger))
            backfill = instance.get_backfill(backfill_id)
            assert backfill is not None
            if backfill.status in (
                BulkActionStatus.COMPLETED_SUCCESS,
                BulkActionStatus.COMPLETED_FAILED,
                BulkActionStatus.FAILED,
            ):
                return {"status": backfill.status}
    return {"status": instance.get_backfill(backfill_id).status}


def test_cli_backfill_submits_an_asset_backfill_the_daemon_runs(
    platform_env: Settings,
    sandbox: SandboxControl,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    settings = platform_env
    stay_within_the_hour()
    events, ids = failures_of_new_orgs(settings, "cli", 2)
    produce_events(settings, events)
    partition = current_hour_partition()
    start = partition_key_start(partition)
    end = start + timedelta(hours=1)
    args = ["backfill", "--start", start.isoformat(), "--end", end.isoformat()]
    args += ["--pipeline", "connector_failure"]

    assert main([*args, "--json"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    assert submitted["partition_keys"] == [partition]
    assert submitted["assets"] == [ALERTS_ASSET, DELIVERIES_ASSET]
    backfill_id = submitted["backfill_id"]

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        backfill = instance.get_backfill(backfill_id)
        assert backfill is not None and backfill.is_asset_backfill
        assert list(backfill.asset_selection) == [
            AssetKey(ALERTS_ASSET),
            AssetKey(DELIVERIES_ASSET),
        ]
        assert backfill.status == BulkActionStatus.REQUESTED
        _defs, repository = repo()
        target = backfill.get_asset_backfill_data(repository.asset_graph).target_subset
        subset = target.partitions_subsets_by_asset_key[AssetKey(ALERTS_ASSET)]
        assert set(subset.get_partition_keys()) == {partition}

        # What the daemon of `make dev` does with it: one run (single-run backfill policy),
        # no ranges, i.e. the partition window re-derived.
        done = _backfill_daemon_iterations(instance, backfill_id)
        assert done["status"] == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs()
        backfill_runs = [r for r in runs if r.tags.get(BACKFILL_ID_TAG) == backfill_id]
        assert len(backfill_runs) == 1 and backfill_runs[0].is_success
        metadata = latest_materialization_metadata(instance, ALERTS_ASSET)
        assert metadata["mode"] == "backfill" and metadata["located_by"] == "run_index"
        delivered = latest_materialization_metadata(instance, DELIVERIES_ASSET)
        assert delivered["mode"] == "backfill" and delivered["inline_delivery"] == "done"
    assert ids <= set(alert_ids_on_topic(settings))


def test_cli_smoke_dry_run_and_help(tmp_path: Path) -> None:
    env_python = Path(sys.executable)
    script = env_python.with_name("alert-platform")
    command = [str(script)] if script.exists() else [str(env_python), "-m", "alert_platform.cli"]
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = now - timedelta(hours=2), now + timedelta(minutes=30)
    keys = hour_partition_keys(start, end)
    assert len(keys) == 3
    dry = subprocess.run(
        [
            *command,
            "backfill",
            "--start",
            start.isoformat(),
            "--end",
            end.isoformat(),
            "--pipeline",
            "connector_failure",
            "--dry-run",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert dry.returncode == 0, dry.stderr
    assert "connector_failure_alerts" in dry.stdout
    for key in keys:
        assert key in dry.stdout
    assert dry.stderr == ""

    helped = subprocess.run(
        [*command, "explain", "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0
    assert "--event TOPIC:PARTITION:OFFSET" in helped.stdout and "--json" in helped.stdout

    old = ["--start", "2020-01-01T00:00", "--end", "2020-01-01T02:00"]
    bad = subprocess.run(
        [*command, "backfill", *old, "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert bad.returncode == 1 and "not partitions of the alert assets" in bad.stderr
