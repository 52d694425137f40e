"""The onboarding chain through Dagster, in process: the daily producer job queries the BigQuery
emulator and writes ``onboarding-events``; the ``onboarding_tail`` sensor's runs turn them into
alerts on ``slack-messages``; the delivery sensor's runs post them to the Slack sandbox. Re-running
the same day repeats the whole chain without a second Slack post."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, build_schedule_context

from alert_platform import topics
from alert_platform.local.bigquery_seed import seed_warehouse
from alert_platform.local.demo import DEMO_ORG_COUNT, build_demo_data, produce_lookup_tables
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.integration.flow_helpers import (
    FlowOptions,
    alert_ids_on_topic,
    latest_materialization_metadata,
    posted_alert_ids,
    read_topic,
    tick_and_run,
    tick_delivery,
)

pytestmark = pytest.mark.integration

# Yesterday (UTC): a complete day, and a partition of the producer's daily partitions.
DAY = (datetime.now(UTC) - timedelta(days=1)).date()
UNASSIGNED_ORG = f"org-{DEMO_ORG_COUNT:04d}"  # the demo leaves the last org without assignment


def at(hour: int, minute: int = 0, day_offset: int = 0) -> str:
    moment = datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=UTC)
    return (moment + timedelta(days=day_offset)).isoformat().replace("+00:00", "Z")


def account(number: int, started: str, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "salesforce_account_id": f"001FLOW{number:012d}",
        "org_id": f"org-{number:04d}",
        "account_name": f"Flow Account {number} & <Co>",
        "plan": "business",
        "onboarding_started_at": started,
        "csdr_email": "ada.lovelace@example.com",
        "region": "eu-west",
        "is_test": False,
    }
    row.update(overrides)
    return row


# Qualifying on DAY: accounts 1-4 (org-0001..org-0004 are assigned in the demo data), and
# account 12 whose org has no assignment (produced, but no alert). Not produced: a test
# account, a row without an account name (rejected), rows of the days before and after.
WAREHOUSE_ROWS = [
    account(1, at(0, 5)),
    account(2, at(9, 15), plan=None, region=None),
    account(3, at(13, 30)),
    account(4, at(23, 59)),
    account(12, at(12), org_id=UNASSIGNED_ORG),
    account(20, at(10), is_test=True),
    account(21, at(11), account_name=""),
    account(22, at(23, 59, day_offset=-1)),
    account(23, at(0, 0, day_offset=1)),
]
PRODUCED = [f"001FLOW{n:012d}" for n in (1, 2, 3, 4, 12)]
ALERTED = [f"001FLOW{n:012d}" for n in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def flow_options() -> FlowOptions:
    """The session BigQuery emulator with a dataset of the module's own; these tests exercise the
    delivery sensor's path, so enrichment must not deliver inline."""
    return FlowOptions(bigquery=True, inline_delivery=False)


def run_producer(
    instance: DagsterInstance, day: str, *, raise_on_error: bool = True
) -> ExecuteInProcessResult:
    from alert_platform.definitions import defs

    job = defs.get_repository_def().get_job("onboarding_producer_job")
    return job.execute_in_process(
        instance=instance, partition_key=day, raise_on_error=raise_on_error
    )


def onboarding_events(settings: Settings) -> list[dict[str, Any]]:
    return [json.loads(value) for _k, value, _h in read_topic(settings, topics.ONBOARDING_EVENTS)]


def test_a_day_of_onboardings_reaches_slack_once_even_when_rerun(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance
) -> None:
    settings = platform_env
    assert seed_warehouse(settings, WAREHOUSE_ROWS) == len(WAREHOUSE_ROWS)
    demo = build_demo_data(event_count=0)
    produce_lookup_tables(settings, demo)
    assert UNASSIGNED_ORG not in demo.assignments
    day = DAY.isoformat()
    expected_alerts = sorted(f"{a}-{day}-onboarding-started" for a in ALERTED)

    # 1. The producer job for the day: one event per qualifying account.
    assert run_producer(instance, day).success
    events = onboarding_events(settings)
    assert sorted(e["data"]["salesforce_account_id"] for e in events) == PRODUCED
    assert {e["id"] for e in events} == {f"onboarding-started:{a}:{day}" for a in PRODUCED}
    metadata = latest_materialization_metadata(instance, "onboarding_started_events")
    assert (metadata["rows"], metadata["produced"], metadata["event_ids"]) == (6, 5, 5)
    assert metadata["rejected"] == 1
    assert metadata["rejected_rows"] == [
        {"row": "001FLOW000000000021", "reason": "account_name empty"}
    ]
    assert str(metadata["query_job_id"]).startswith("onboarding_started_")
    assert metadata["day"] == day

    # 2. The tail sensor: alerts for the assigned accounts (the unassigned org is unmatched).
    tailed, runs = tick_and_run("onboarding_tail", instance, None)
    assert runs and all(run.success for run in runs)
    assert sorted(alert_ids_on_topic(settings)) == expected_alerts
    alerts = latest_materialization_metadata(instance, "onboarding_alerts")
    assert alerts["mode"] == "live"
    assert read_topic(settings, topics.ALERTS_DLQ) == []

    # 3. Delivery: one Slack message per qualifying, assigned account.
    delivered, delivery_runs = tick_delivery(instance)
    assert delivery_runs and all(run.success for run in delivery_runs)
    assert posted_alert_ids(sandbox) == expected_alerts
    message = next(
        m
        for m in sandbox.messages()
        if m["metadata"]["event_payload"]["alert_id"] == expected_alerts[0]
    )
    assert message["text"] == "Onboarding started for Flow Account 1 &amp; &lt;Co&gt;"
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "context"]

    # 4. Re-run the same day and the whole chain: same event ids, same alert ids, no new post.
    assert run_producer(instance, day).success
    rerun_events = onboarding_events(settings)
    assert len(rerun_events) == 2 * len(PRODUCED)
    assert sorted(e["id"] for e in rerun_events) == sorted(2 * [e["id"] for e in events])
    _, runs = tick_and_run("onboarding_tail", instance, tailed.cursor)
    assert runs and all(run.success for run in runs)
    assert sorted(alert_ids_on_topic(settings)) == sorted(2 * expected_alerts)
    # Every re-derived alert is in the ledger already: the sensor settles them without a run.
    _, delivery_runs = tick_delivery(instance, delivered.cursor)
    assert delivery_runs == []
    assert posted_alert_ids(sandbox) == expected_alerts  # still one each


def test_a_failing_query_fails_the_run_with_bigquerys_message(
    platform_env: Settings, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"missing_{uuid.uuid4().hex}"
    monkeypatch.setenv("BIGQUERY_DATASET", missing)
    result = run_producer(instance, DAY.isoformat(), raise_on_error=False)
    assert not result.success
    failures = result.get_step_failure_events()
    assert len(failures) == 1
    data = failures[0].step_failure_data
    assert data.user_failure_data is not None
    description = data.user_failure_data.description or ""
    assert description.startswith(f"BigQuery onboarding query for {DAY.isoformat()} failed: ")
    assert f"Not found: Dataset {platform_env.bigquery_project}:{missing}" in description
    assert data.user_failure_data.metadata["code"].value == 404
    assert str(data.user_failure_data.metadata["job_id"].value).startswith("onboarding_started_")


def test_the_schedule_produces_the_previous_complete_day(instance: DagsterInstance) -> None:
    from alert_platform.definitions import defs

    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def("onboarding_producer_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6 * * *", "UTC")
    assert schedule.job_name == "onboarding_producer_job"
    today = DAY + timedelta(days=1)
    moment = datetime(today.year, today.month, today.day, 6, 0, tzinfo=UTC)
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=moment, repository_def=repo
    )
    (request,) = schedule.evaluate_tick(context).run_requests or []
    assert (request.partition_key, request.run_key) == (DAY.isoformat(), DAY.isoformat())
