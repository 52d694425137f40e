"""Helpers for the flow tests: Dagster's sensors and jobs run in process against a private broker
and the session Slack sandbox (fixtures in tests/integration/conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dagster import AssetKey, DagsterInstance, SensorResult, build_sensor_context

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.kafka.reader import read_range
from alert_platform.kafka.records import SourceRecord
from alert_platform.local.demo import connector_event
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings


@dataclass(frozen=True)
class FlowOptions:
    """What the flow fixtures set up; a module overrides the ``flow_options`` fixture to change it.

    bigquery            also use the session BigQuery emulator, with a dataset of the module's own
    inline_delivery     set ALERT_PLATFORM_INLINE_DELIVERY to this (``None``: leave it alone)
    clear_dagster_home  unset DAGSTER_HOME, so only the instance a test hands over is used
    """

    bigquery: bool = False
    inline_delivery: bool | None = None
    clear_dagster_home: bool = False


# -- running the definitions in process ----------------------------------------------------------


def repo():
    """The platform's Definitions and their repository (imported late: tests set the env first)."""
    from alert_platform.definitions import defs

    return defs, defs.get_repository_def()


def tick_and_run(
    sensor_name: str,
    instance: DagsterInstance,
    cursor: str | None,
    raise_on_error: bool = True,
) -> tuple[SensorResult, list[object]]:
    """Evaluate a sensor once and execute every run it requests, in process."""
    defs, repository = repo()
    sensor_def = repository.get_sensor_def(sensor_name)
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:  # a context manager: some resources have a teardown
        result = sensor_def(context)
    assert isinstance(result, SensorResult)
    outcomes = []
    for request in result.run_requests or []:
        job = repository.get_job(sensor_def.job_name)
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


def latest_materialization_metadata(instance: DagsterInstance, key: str) -> dict[str, object]:
    records = instance.fetch_materializations(AssetKey(key), limit=1).records
    assert records, f"no materialization of {key}"
    materialization = records[0].asset_materialization
    assert materialization is not None
    return {k: v.value for k, v in materialization.metadata.items()}


def materializations(instance: DagsterInstance, key: str) -> list[dict[str, object]]:
    """The metadata of every materialization of ``key``, oldest first."""
    records = instance.fetch_materializations(AssetKey(key), limit=1_000).records
    out = []
    for record in reversed(records):
        materialization = record.asset_materialization
        assert materialization is not None
        out.append({k: v.value for k, v in materialization.metadata.items()})
    return out


def check_passed(instance: DagsterInstance, key: str, check: str) -> bool:
    """Whether the latest evaluation of the asset check ``check`` of ``key`` passed."""
    from dagster import AssetCheckKey

    check_key = AssetCheckKey(AssetKey(key), check)
    records = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1)
    assert records, f"the check {check} of {key} never ran"
    evaluation = records[0].event.dagster_event.event_specific_data  # type: ignore[union-attr]
    return bool(evaluation.passed)


# -- what is on the topics and in the sandbox ----------------------------------------------------


def topic_records(settings: Settings, topic: str) -> list[SourceRecord]:
    """Every record of ``topic``: all partitions, from offset 0 to the probed end."""
    consumer = make_consumer(settings)
    try:
        out: list[SourceRecord] = []
        for partition, end in probe_end_offsets(consumer, topic).items():
            for batch in read_range(consumer, OffsetRange(topic, partition, 0, end)):
                out.extend(batch)
        return out
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None, dict]]:
    """Every record of ``topic`` as ``(key, value, headers)``."""
    return [(r.key, r.value, dict(r.headers)) for r in topic_records(settings, topic)]


def alert_ids_on_topic(settings: Settings) -> list[str]:
    """The alert id of every record on slack-messages (repeats included)."""
    records = topic_records(settings, topics.SLACK_MESSAGES)
    return [json.loads(r.value)["alert_id"] for r in records]


def posted_alert_ids(sandbox: SandboxControl) -> list[str]:
    """The alert id of every message the sandbox holds, sorted (repeats included)."""
    return sorted(m["metadata"]["event_payload"]["alert_id"] for m in sandbox.messages())


# -- connector events and the alerts they should give --------------------------------------------


def connector_failure_alert_id(org_id: str, labels: dict[str, Any]) -> str:
    return f"{org_id}-{labels['env_id']}-{labels['connector_id']}-connector-failure"


def connector_status_event(
    org_id: str,
    number: int,
    *,
    old_status: str = "Provisioning",
    tag: str | None = None,
    **labels: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A demo connector event of now whose connector left ``old_status`` (a provisioning failure
    by default), and its labels. With ``tag``, connector id ``lcc-<tag>-<number>`` and event id
    ``evt-<tag>-<number>``; ``labels`` override (``None`` removes one)."""
    event = connector_event(org_id, number, datetime.now(UTC))
    current = json.loads(event["data"])["labels"]
    current["connector_old_status"] = old_status
    if tag is not None:
        current["connector_id"] = f"lcc-{tag}-{number}"
        event["id"] = f"evt-{tag}-{number}"
    for name, value in labels.items():
        if value is None:
            current.pop(name, None)
        else:
            current[name] = value
    event["data"] = json.dumps({"labels": current})
    return event, current


def expected_alert_ids(settings_data, events) -> set[str]:
    """The alerts the demo ``events`` should give: provisioning failures of assigned orgs."""
    ids = set()
    for org_id, event in events:
        labels = json.loads(event["data"])["labels"]
        if labels["connector_old_status"] == "Provisioning" and org_id in settings_data.assignments:
            ids.add(connector_failure_alert_id(org_id, labels))
    return ids
