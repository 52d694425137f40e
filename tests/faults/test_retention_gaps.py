"""Retention gaps, for real: a failed range whose start retention deleted is clamped to the low
watermark, its retained records are enriched and delivered once, the loss is counted (run
metadata, a red asset check, one ops notice) and the range is not re-launched again.

The local broker never deletes records, so the platform runs (sensors and runs in process)
against librdkafka's mock cluster, which really drops a partition's oldest batches beyond
5 MiB (tests/retention_broker.py); Slack is the session sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, instance_for_test

from alert_platform import topics
from alert_platform.kafka.clients import make_producer
from alert_platform.kafka.tailing import TailCursor
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.sandbox.state import DEFAULT_BURST, DEFAULT_PER_SECOND
from alert_platform.settings import Settings
from tests.faults.harness import (
    Burst,
    add_sandbox_users,
    alert_id_of,
    connector_failure_event,
    fault_orgs,
    lookup_records,
    posted_alert_ids,
    produce,
    read_topic,
)
from tests.faults.results import record, tally
from tests.integration.flow_helpers import repo, tick_and_run, tick_delivery
from tests.retention_broker import OLD_RECORD_BYTES, low_watermark, mock_cluster, push_out

pytestmark = pytest.mark.integration

TAIL = "connector_failure_tail"
ASSET = "connector_failure_alerts"
OPS_CHANNEL = "C0OPS"


@pytest.fixture
def mock_env(
    tmp_path: Path, slack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The platform's environment pointed at a mock cluster and the session sandbox."""
    with mock_cluster() as bootstrap:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ALERT_PLATFORM_DATA_DIR": str(tmp_path / "data"),
            "SLACK_API_URL": slack_settings.slack_api_url,
            "SLACK_BOT_TOKEN": slack_settings.slack_bot_token.get_secret_value(),
            "ALERT_PLATFORM_START_POLICY": "earliest",
            "ALERT_PLATFORM_INLINE_DELIVERY": "true",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("ALERT_LEDGER_URL", raising=False)
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        yield Settings.from_env()


@pytest.fixture
def sandbox(slack_settings: Settings) -> Iterator[SandboxControl]:
    control = SandboxControl(slack_settings.slack_api_url)
    control.reset()
    control.set_rate_limit(per_second=0, burst=0)
    yield control
    control.reset()
    control.set_rate_limit(per_second=DEFAULT_PER_SECOND, burst=DEFAULT_BURST)


def failures(orgs, tag: str, *, padding: int = 0) -> Burst:
    """One provisioning failure per org (each its own alert); ``padding`` bytes per event."""
    out = Burst()
    for number, org in enumerate(orgs):
        connector_id = f"lcc-{tag}-{number}"
        event = connector_failure_event(org.org_id, connector_id, number=number)
        if padding:
            event["padding"] = "p" * padding
        out.events.append((org.org_id.encode(), json.dumps(event).encode()))
        out.expected.add(alert_id_of(org.org_id, "env-1", connector_id))
    return out


def produce_one_batch(settings: Settings, burst: Burst) -> None:
    """Every event of ``burst`` to partition 0 of the source topic, in one uncompressed batch."""
    producer = make_producer(settings, **{"compression.type": "none", "linger.ms": 1000})
    for key, value in burst.events:
        producer.produce(topics.NOTIFICATIONS, key=key, value=value, partition=0)
    assert producer.flush(10) == 0


def evaluate(instance: DagsterInstance, cursor: str | None) -> SensorResult:
    defs, repository = repo()
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:
        result = repository.get_sensor_def(TAIL)(context)
    assert isinstance(result, SensorResult)
    return result


def fail_runs_of(instance: DagsterInstance, result: SensorResult) -> None:
    """The runs the tick asked for were launched and failed (e.g. a broker outage)."""
    _defs, repository = repo()
    for request in result.run_requests or []:
        job = repository.get_job("connector_failure_alerts_job")
        tags = {**request.tags, "dagster/run_key": request.run_key}
        run = instance.create_run_for_job(job, run_config=request.run_config, tags=tags)
        instance.report_run_failed(run)


def test_failed_range_whose_start_retention_deleted_is_clamped_counted_and_done(
    mock_env: Settings, sandbox: SandboxControl
) -> None:
    settings = mock_env
    orgs = fault_orgs("gap", 10)
    add_sandbox_users(sandbox, orgs)
    for topic, records in lookup_records(orgs).items():
        produce(settings, topic, records)
    # Offsets 0..9: events big enough that retention drops their batch alone (the alerts they
    # would give are lost with them); offsets 10..19: events that stay.
    doomed = failures(orgs, "doomed", padding=OLD_RECORD_BYTES)
    kept = failures(orgs, "kept")
    produce_one_batch(settings, doomed)
    produce_one_batch(settings, kept)

    with instance_for_test() as instance:
        first = evaluate(instance, None)
        (request,) = first.run_requests or []
        assert request.run_config["ops"][ASSET]["config"]["ranges"][0]["end"] == 20
        fail_runs_of(instance, first)

        # Retention deletes offsets 0..9 (the failed range's start) while it waits for a retry.
        fillers = push_out(settings.bootstrap_servers, topics.NOTIFICATIONS, below=10)
        low = low_watermark(settings.bootstrap_servers, topics.NOTIFICATIONS)
        assert low == 10
        later = failures(orgs, "later")
        produce_one_batch(settings, later)

        retry, runs = tick_and_run(TAIL, instance, first.cursor, raise_on_error=False)
        assert runs and all(run.success for run in runs)
        _delivered, deliveries = tick_delivery(instance)
        assert all(run.success for run in deliveries)
        settled, more = tick_and_run(TAIL, instance, retry.cursor)
        assert more == [] and TailCursor.from_json(settled.cursor).pending == ()

        checks = [e for run in runs for e in run.get_asset_check_evaluations()]
        metadata = [
            {k: v.value for k, v in m.metadata.items()}
            for run in runs
            for m in run.get_asset_materialization_events()
            for m in [m.event_specific_data.materialization]
        ]

    lost_offsets = sum(int(m.get("lost_offsets", 0)) for m in metadata)
    red = [c for c in checks if not c.passed]
    ops = [m for m in sandbox.messages(OPS_CHANNEL) if "Retention gap" in m["text"]]
    posted = posted_alert_ids(sandbox)
    expected = kept.expected | later.expected
    counts = tally(expected, posted)
    dead = len(read_topic(settings, topics.ALERTS_DLQ))
    record(
        "retention gaps",
        trials=1,
        alerts_expected=counts["alerts_expected"],
        delivered_once=counts["delivered_once"],
        lost=counts["lost"],
        duplicated=counts["duplicated"],
        dead_lettered=dead,
        notes=(
            f"mock cluster (5 MiB/partition): {low} offsets of a failed range deleted before its "
            f"retry; counted lost_offsets={lost_offsets}, {len(red)} red no_retention_gaps "
            f"check(s), {len(ops)} ops notice(s); {counts['unexpected']} alert(s) of deleted "
            f"events posted; dead letters = the {fillers} non-event filler records"
        ),
    )
    assert lost_offsets == low
    assert [c.metadata["lost_offsets"].value for c in red] == [low]
    assert len(ops) == 1 and "offsets 0..9" in ops[0]["text"]
    assert counts["delivered_once"] == len(expected) == 20
    assert counts["lost"] == 0 and counts["duplicated"] == 0 and counts["unexpected"] == 0
    assert not doomed.expected & set(posted)
    assert dead == fillers
