"""The whole platform through Dagster, in process: tail sensors tick, their runs execute, and
alerts travel topic -> tables -> slack-messages -> Slack sandbox exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    SensorResult,
    build_sensor_context,
    instance_for_test,
)

from alert_platform import topics
from alert_platform.kafka.admin import create_topics
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.kafka.reader import read_range
from alert_platform.local.demo import (
    build_demo_data,
    connector_event,
    produce_events,
    produce_lookup_tables,
)
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flow_settings(
    tmp_path_factory: pytest.TempPathFactory, slack_settings: Settings
) -> Iterator[Settings]:
    """A broker of its own (the pipelines use the real topic names) and the session sandbox."""
    data_dir = tmp_path_factory.mktemp("flow")
    own = free_port_settings(data_dir)
    stack = LocalStack(own, die_with_parent=True)
    stack.up(["kafka"])
    settings = own.with_overrides(
        slack_api_url=slack_settings.slack_api_url, slack_bot_token=slack_settings.slack_bot_token
    )
    create_topics(settings)
    try:
        yield settings
    finally:
        stack.down()


@pytest.fixture
def platform_env(flow_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the definitions' resources (environment-configured) at the test stack."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", flow_settings.bootstrap_servers)
    monkeypatch.setenv("ALERT_PLATFORM_DATA_DIR", str(flow_settings.data_dir))
    monkeypatch.setenv("SLACK_API_URL", flow_settings.slack_api_url)
    monkeypatch.setenv("SLACK_BOT_TOKEN", flow_settings.slack_bot_token)
    return flow_settings


@pytest.fixture
def sandbox(flow_settings: Settings) -> Iterator[SandboxControl]:
    control = SandboxControl(flow_settings.slack_api_url)
    control.reset()
    control.set_rate_limit(per_second=0, burst=0)
    yield control
    control.reset()
    control.set_rate_limit(per_second=1, burst=3)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def tick_and_run(
    sensor_name: str,
    instance: DagsterInstance,
    cursor: str | None,
    raise_on_error: bool = True,
) -> tuple[SensorResult, list[object]]:
    """Evaluate a sensor once and execute every run it requests, in process."""
    from alert_platform.definitions import defs

    repo = defs.get_repository_def()
    sensor_def = repo.get_sensor_def(sensor_name)
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    )
    result = sensor_def(context)
    assert isinstance(result, SensorResult)
    outcomes = []
    for request in result.run_requests or []:
        job = repo.get_job(sensor_def.job_name)
        tags = {**request.tags, "dagster/run_key": request.run_key}
        outcomes.append(
            job.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                partition_key=request.partition_key,
                tags=tags,
                raise_on_error=raise_on_error,
            )
        )
    return result, outcomes


def tick_delivery(
    instance: DagsterInstance, cursor: str | None = None, *, raise_on_error: bool = True
) -> tuple[SensorResult, list[object]]:
    """Tick the delivery sensor twice (it settles one tick) and run what it requests."""
    first, runs = tick_and_run("slack_delivery_tail", instance, cursor, raise_on_error)
    second, more = tick_and_run("slack_delivery_tail", instance, first.cursor, raise_on_error)
    return second, runs + more


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None, dict]]:
    consumer = make_consumer(settings)
    try:
        out = []
        for partition, end in probe_end_offsets(consumer, topic).items():
            for batch in read_range(consumer, OffsetRange(topic, partition, 0, end)):
                out.extend((r.key, r.value, dict(r.headers)) for r in batch)
        return out
    finally:
        consumer.close()


def latest_materialization_metadata(instance: DagsterInstance, key: str) -> dict[str, object]:
    records = instance.fetch_materializations(AssetKey(key), limit=1).records
    assert records, f"no materialization of {key}"
    materialization = records[0].asset_materialization
    assert materialization is not None
    return {k: v.value for k, v in materialization.metadata.items()}


def expected_alert_ids(settings_data, events) -> set[str]:
    ids = set()
    for org_id, event in events:
        labels = json.loads(event["data"])["labels"]
        if labels["connector_old_status"] == "Provisioning" and org_id in settings_data.assignments:
            ids.add(f"{org_id}-{labels['env_id']}-{labels['connector_id']}-connector-failure")
    return ids


@pytest.mark.parametrize("inline", [True, False], ids=["inline-delivery", "sensor-delivery"])
def test_events_become_alerts_then_slack_posts_exactly_once(
    platform_env: Settings,
    sandbox: SandboxControl,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    inline: bool,
) -> None:
    settings = platform_env
    monkeypatch.setenv("ALERT_PLATFORM_INLINE_DELIVERY", "true" if inline else "false")
    before = {
        json.loads(v)["alert_id"] for _k, v, _h in read_topic(settings, topics.SLACK_MESSAGES)
    }
    demo = build_demo_data(event_count=40, seed=11 if inline else 12)
    produce_lookup_tables(settings, demo)
    produce_events(settings, demo.events)
    producer = make_producer(settings)
    producer.produce(topics.NOTIFICATIONS, key=b"org-0001", value=b'{"Provisioning": ')
    producer.flush(10)
    expected = expected_alert_ids(demo, demo.events) - before
    assert len(expected) >= 5, "the demo seed should yield several alerts"

    # Enrichment: one tick launches one run for every partition with new records.
    result, runs = tick_and_run("connector_failure_tail", instance, None)
    assert len(runs) == 1 and runs[0].success
    request = result.run_requests[0]
    assert request.tags["alert-platform/source"] == topics.NOTIFICATIONS
    ranges = request.run_config["ops"]["connector_failure_alerts"]["config"]["ranges"]
    assert len({r["partition"] for r in ranges}) == len(ranges) > 1
    messages = read_topic(settings, topics.SLACK_MESSAGES)
    produced_ids = {json.loads(value)["alert_id"] for _key, value, _h in messages} - before
    assert produced_ids == expected
    dlq = read_topic(settings, topics.ALERTS_DLQ)
    assert (b"org-0001", b'{"Provisioning": ') in [(key, value) for key, value, _h in dlq]
    bad = next(h for key, value, h in dlq if value == b'{"Provisioning": ')
    assert bad["error"].startswith(b"value is not valid JSON")

    # Run metadata is recorded on the asset's materializations.
    metadata = latest_materialization_metadata(instance, "connector_failure_alerts")
    assert metadata["mode"] == "live"
    assert {"read", "filtered_out", "unmatched", "routed_to_fallback", "alerts"} <= set(metadata)
    assert metadata.get("inline_delivery") == ("done" if inline else None)

    # A second tick with nothing new launches nothing.
    again, reruns = tick_and_run("connector_failure_tail", instance, result.cursor)
    assert reruns == [] and again.skip_reason is not None

    # The delivery sensor settles one tick, then delivers what is not delivered yet.
    first, none_yet = tick_and_run("slack_delivery_tail", instance, None)
    assert none_yet == []
    _, delivery_runs = tick_and_run("slack_delivery_tail", instance, first.cursor)
    if inline:
        assert delivery_runs == [], "ranges delivered inline need no delivery run"
    else:
        assert len(delivery_runs) == 1 and delivery_runs[0].success
    posted = [m["metadata"]["event_payload"]["alert_id"] for m in sandbox.messages()]
    assert sorted(posted) == sorted(expected)
    responses = [json.loads(v) for _k, v, _h in read_topic(settings, topics.SLACK_RESPONSES)]
    assert expected <= {r["alert_id"] for r in responses if r["ok"]}

    # Replaying every range of slack-messages (a re-run, or a backfill) posts nothing twice.
    from alert_platform.definitions import defs

    consumer = make_consumer(settings)
    ends = probe_end_offsets(consumer, topics.SLACK_MESSAGES)
    consumer.close()
    everything = [OffsetRange(topics.SLACK_MESSAGES, p, 0, e).as_dict() for p, e in ends.items()]
    job = defs.get_repository_def().get_job("slack_delivery_job")
    config = {"ops": {"slack_deliveries": {"config": {"ranges": everything}}}}
    assert job.execute_in_process(run_config=config, instance=instance).success
    assert len(sandbox.messages()) == len(expected)


def test_late_assignment_is_joined_by_the_next_run(
    platform_env: Settings, sandbox: SandboxControl, instance: DagsterInstance, tmp_path: Path
) -> None:
    """A table update written before an event is seen by that event's join (catch-up)."""
    settings = platform_env
    first, _ = tick_and_run("connector_failure_tail", instance, None)
    org_id = "org-late-0001"
    producer = make_producer(settings)
    row = {"org_id": org_id, "csdr_email": "Ada.Lovelace@example.com", "csdr_name": "Ada",
           "account_name": "Late Corp"}  # fmt: skip
    producer.produce(topics.CSDR_ASSIGNMENT, key=org_id.encode(), value=json.dumps(row).encode())
    producer.flush(10)
    event = connector_event(org_id, 1, datetime.now(UTC))
    labels = json.loads(event["data"])["labels"]
    labels["connector_old_status"] = "Provisioning"
    event["data"] = json.dumps({"labels": labels})
    produce_events(settings, [(org_id, event)])

    _, runs = tick_and_run("connector_failure_tail", instance, first.cursor)
    assert runs and all(run.success for run in runs)
    alert_id = f"{org_id}-{labels['env_id']}-{labels['connector_id']}-connector-failure"
    values = [json.loads(v) for _k, v, _h in read_topic(settings, topics.SLACK_MESSAGES)]
    alert = next(v for v in values if v["alert_id"] == alert_id)
    assert alert["channel_id"] == "U0DEMO0001"  # joined by e-mail, case-insensitively
