"""``explain``: the lineage of alerts and source events after real Dagster runs, in process,
on a private broker and the session Slack sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from alert_platform import topics
from alert_platform.cli import main
from alert_platform.explain import (
    ALERT,
    DEAD_LETTERED,
    FILTERED_OUT,
    TABLES_NOTE,
    UNAVAILABLE,
    UNMATCHED,
    Explainer,
)
from alert_platform.local.demo import (
    UNMAPPED_MEMBER,
    build_demo_data,
    demo_org_id,
    produce_events,
    produce_lookup_tables,
)
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.retention import prune_state
from alert_platform.settings import Settings
from tests.integration.flow_helpers import (
    FlowOptions,
    connector_status_event,
    tick_and_run,
    tick_delivery,
    topic_records,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flow_options() -> FlowOptions:
    """These tests exercise the delivery sensor's path: enrichment must not deliver inline; and
    only the Dagster instance a test hands over is used."""
    return FlowOptions(inline_delivery=False, clear_dagster_home=True)


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    """An instance directory with a dagster.yaml, so the CLI can look run ids up in it."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[DagsterInstance]:
    """Unlike the conftest's ephemeral instance: on disk, in ``dagster_home``."""
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance


def event(org_id: str, number: int, **options: Any):
    """``(org_id, event, labels)`` of a connector event ``evt-explain-<number>`` of connector
    ``lcc-explain-<number>``; ``options`` as for ``connector_status_event``."""
    body, labels = connector_status_event(org_id, number, tag="explain", **options)
    return org_id, body, labels


def positions(settings: Settings) -> dict[str, str]:
    """Event id -> ``topic:partition:offset`` of every event on the notifications topic."""
    records = topic_records(settings, topics.NOTIFICATIONS)
    return {json.loads(record.value)["id"]: record.position for record in records}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["explain", *args]) == 0
    return capsys.readouterr().out


def test_explain_alerts_and_events(
    platform_env: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    dagster_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = platform_env
    demo = build_demo_data(event_count=0)
    produce_lookup_tables(settings, demo)
    mapped = next(
        org for org, row in demo.assignments.items() if row["csdr_email"] in demo.slack_users
    )
    unmapped = next(
        org for org, row in demo.assignments.items() if row["csdr_email"] == UNMAPPED_MEMBER[0]
    )
    unassigned = demo_org_id(12)
    assert unassigned not in demo.assignments
    cases = {
        "delivered": event(mapped, 1),
        "filtered": event(mapped, 2, old_status="Running"),
        "unassigned": event(unassigned, 3),
        "dead": event(mapped, 4, connector_id=None),
        "fallback": event(unmapped, 5),
    }
    produce_events(settings, [(org, body) for org, body, _labels in cases.values()])
    where = positions(settings)
    position = {name: where[body["id"]] for name, (_org, body, _l) in cases.items()}
    delivered_labels = cases["delivered"][2]
    alert_id = f"{mapped}-{delivered_labels['env_id']}-lcc-explain-1-connector-failure"

    # Enrichment runs: they index what they read.
    _tail, enrich_runs = tick_and_run("connector_failure_tail", instance, None)
    assert enrich_runs and all(run.success for run in enrich_runs)
    enrich_ids = {run.run_id for run in enrich_runs}

    # Produced, not delivered yet: no ledger row, found on slack-messages.
    with Explainer(settings) as explainer:
        pending = explainer.explain_alert(alert_id)
    assert pending.ledger == []
    assert pending.messages and pending.messages[0].startswith(f"{topics.SLACK_MESSAGES}:")
    assert any("not delivered" in note for note in pending.notes)
    assert [e.position for e in pending.events] == [position["delivered"]]
    assert pending.events[0].delivery == "no ledger row: not delivered (yet)"

    _tick, delivery_runs = tick_delivery(instance)
    assert delivery_runs and all(run.success for run in delivery_runs)
    delivery_ids = {run.run_id for run in delivery_runs}
    posted = {m["metadata"]["event_payload"]["alert_id"]: m for m in sandbox.messages()}
    assert alert_id in posted

    with Explainer(settings) as explainer:
        # (1) a delivered alert, from its id
        result = explainer.explain_alert(alert_id)
        assert len(result.ledger) == 1
        row = result.ledger[0]
        assert row.state == "delivered" and row.attempts == 1
        assert (row.channel, row.ts) == (posted[alert_id]["channel"], posted[alert_id]["ts"])
        assert row.source == position["delivered"]
        assert row.owner in delivery_ids  # the Dagster run that delivered it
        assert row.delivered_at is not None and row.error is None
        (source,) = result.events
        assert source.outcome == ALERT and source.alert_id == alert_id
        assert source.value["id"] == "evt-explain-1" and source.key == mapped
        assert [(j.name, j.matched) for j in source.joins] == [
            ("assignment", True),
            ("slack_user", True),
        ]
        assert source.joins[0].key == mapped
        assert source.joins[0].row["csdr_email"] == demo.assignments[mapped]["csdr_email"]
        assert source.tables_note.startswith(TABLES_NOTE)
        assert {run.run_id for run in source.enrichment_runs} <= enrich_ids
        assert len(source.enrichment_runs) == 1
        assert source.delivery.startswith(f"delivered to {row.channel}")
        assert row.owner in source.delivery

        # (2) a filtered event
        (filtered,) = explainer.explain_event(*_split(position["filtered"]))
        assert filtered.outcome == FILTERED_OUT
        assert "'Running'" in filtered.reason and "Provisioning" in filtered.reason
        assert filtered.alert_id is None and filtered.enrichment_runs

        # (3) an event without assignment
        (unmatched,) = explainer.explain_event(*_split(position["unassigned"]))
        assert unmatched.outcome == UNMATCHED
        assert "csdr_assignments" in unmatched.reason and unassigned in unmatched.reason
        assert [(j.name, j.matched) for j in unmatched.joins] == [("assignment", False)]
        assert unmatched.alert_id == f"{unassigned}-{cases['unassigned'][2]['env_id']}-" + (
            "lcc-explain-3-connector-failure"
        )
        assert unmatched.ledger == [] and "no ledger row" in unmatched.delivery

        # (4) a dead-lettered event
        (dead,) = explainer.explain_event(*_split(position["dead"]))
        assert dead.outcome == DEAD_LETTERED and dead.stage == "validate"
        assert "labels.connector_id missing" in dead.reason
        assert topics.ALERTS_DLQ in dead.reason

        # (5) an alert routed to the fallback channel
        (fallback,) = explainer.explain_event(*_split(position["fallback"]))
        assert fallback.outcome == ALERT and fallback.routed_to_fallback
        assert fallback.channel == settings.slack_fallback_channel
        assert fallback.intended_for == {"email": UNMAPPED_MEMBER[0], "name": UNMAPPED_MEMBER[1]}
        assert "no slack_users row" in fallback.reason
        assert fallback.ledger and fallback.ledger[0].relation == "this event"

        # Positions that hold nothing
        topic, partition, _offset = _split(position["delivered"])
        (missing,) = explainer.explain_event(topic, partition, 10_000)
        assert missing.outcome == UNAVAILABLE and "past the end" in missing.reason
        unknown = explainer.explain_alert("no-such-alert")
        assert unknown.ledger == [] and unknown.events == [] and unknown.notes

    # The CLI: JSON and text, with the runs looked up in the Dagster instance.
    home = ["--dagster-home", str(dagster_home)]
    payload = json.loads(run_cli(capsys, alert_id, "--json", *home))
    assert payload["alert_id"] == alert_id
    assert payload["ledger"][0]["state"] == "delivered"
    assert payload["events"][0]["outcome"] == ALERT
    owner = payload["ledger"][0]["owner"]
    assert payload["dagster_runs"][owner]["job"] == "slack_delivery_job"
    assert payload["dagster_runs"][owner]["status"] == "SUCCESS"
    enrich_run = payload["events"][0]["enrichment_runs"][0]["run_id"]
    assert payload["dagster_runs"][enrich_run]["job"] == "connector_failure_alerts_job"

    text = run_cli(capsys, alert_id, *home)
    assert f"Alert {alert_id}" in text and "delivered" in text and owner in text
    assert "tables are as of now" in text and "Dagster runs:" in text

    text = run_cli(capsys, "--event", position["filtered"], "--no-dagster")
    assert "FILTERED_OUT" in text and "'Running'" in text
    text = run_cli(capsys, "--event", position["dead"], "--no-dagster")
    assert "DEAD_LETTERED" in text and "labels.connector_id missing" in text
    events = json.loads(run_cli(capsys, "--event", position["unassigned"], "--json"))
    assert events["events"][0]["outcome"] == UNMATCHED

    assert main(["explain", "--event", "not-a-position"]) == 1
    assert "TOPIC:PARTITION:OFFSET" in capsys.readouterr().err
    assert main(["explain", "--event", "no-such-topic:0:1"]) == 1
    assert "no pipeline reads topic" in capsys.readouterr().err

    # Retention: a month on, the rows are pruned, and explain says when and up to what time.
    report = prune_state(settings, now=datetime.now(UTC) + timedelta(days=30))
    assert report.ledger >= 1 and report.run_index >= len(enrich_ids)
    with Explainer(settings) as explainer:
        gone = explainer.explain_alert(alert_id)
        assert gone.ledger == [] and gone.messages
        assert any("unless its row was pruned" in note for note in gone.notes)
        assert any(note.startswith("pruned: the event time") for note in gone.notes)
        (source,) = gone.events
        assert source.position == position["delivered"] and source.enrichment_runs == []
        assert any("run-index rows recorded before" in note for note in source.notes)
    text = run_cli(capsys, alert_id, "--no-dagster")
    assert "were pruned at" in text and report.before.strftime("%Y-%m-%dT%H:%M") in text
    text = run_cli(capsys, "--event", position["filtered"], "--no-dagster")
    assert "run-index rows recorded before" in text


def _split(position: str) -> tuple[str, int, int]:
    topic, partition, offset = position.rsplit(":", 2)
    return topic, int(partition), int(offset)
