"""Stream mode in Dagster against a broker of the module's own and the Slack sandbox: the
stream job's runs enrich and deliver (exactly once, health observations, drain when the run is
interrupted), the supervisor keeps one run per stream alive, the checks judge a lagging group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetObservation,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    SensorResult,
    build_sensor_context,
    define_asset_job,
)

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import probe_end_offsets
from alert_platform.kafka.writer import BatchProducer
from alert_platform.local.demo import build_demo_data, produce_events, produce_lookup_tables
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.stream.lag import group_lag
from alert_platform.stream.names import DELIVERY_STREAM, all_streams, stream_group
from tests.integration.flow_helpers import expected_alert_ids, posted_alert_ids, repo
from tests.integration.stream_helpers import wait_for

STREAM_ENV = {
    # fast group joins and fetches on the local broker (docs/local-broker.md)
    "KAFKA_SESSION_TIMEOUT_MS": "2000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "KAFKA_FETCH_WAIT_MAX_MS": "10",
    "ALERT_PLATFORM_STREAM_HEALTH_INTERVAL_S": "1",
    "SLACK_CHANNEL_RATE_PER_S": "1000",
    "SLACK_CHANNEL_BURST": "1000",
}


@pytest.fixture
def stream_env(platform_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The platform env in stream mode, with consumer groups of the test's own."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    for name, value in {**STREAM_ENV, "ALERT_PLATFORM_STREAM_GROUP_PREFIX": prefix}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALERT_PLATFORM_MODE", "stream")
    return platform_env.with_overrides(stream_group_prefix=prefix)


def commit_at_start(settings: Settings, stream: str) -> None:
    """Commit offset 0 of every partition for ``stream``'s group: its worker reads what is
    already on the topic (a new group would start at the end)."""
    group = stream_group(settings.stream_group_prefix, stream)
    consumer = make_consumer(settings, group_id=group)
    try:
        partitions = consumer.list_topics(stream, timeout=10).topics[stream].partitions
        offsets = [TopicPartition(stream, p, 0) for p in partitions]
        consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()


def commit_at(settings: Settings, stream: str, offsets: dict[int, int]) -> None:
    consumer = make_consumer(settings, group_id=stream_group(settings.stream_group_prefix, stream))
    try:
        tps = [TopicPartition(stream, p, o) for p, o in offsets.items()]
        consumer.commit(offsets=tps, asynchronous=False)
    finally:
        consumer.close()


def observations(instance: DagsterInstance, key: AssetKey) -> list[dict[str, object]]:
    records = instance.fetch_observations(key, limit=1_000).records
    out = []
    for record in records:
        observation = record.asset_observation
        assert observation is not None
        out.append({k: v.value for k, v in observation.metadata.items()})
    return out


def test_stream_runs_deliver_exactly_once_observe_health_and_drain_on_interrupt(
    stream_env: Settings, sandbox: SandboxControl, instance: DagsterInstance
) -> None:
    from assets.streams import STREAM_JOB, stream_asset_keys, stream_run_config

    settings = stream_env
    demo = build_demo_data(event_count=30, seed=41)
    produce_lookup_tables(settings, demo)
    produce_events(settings, demo.events)
    expected = expected_alert_ids(demo, demo.events)
    assert len(expected) >= 5
    commit_at_start(settings, topics.NOTIFICATIONS)
    commit_at_start(settings, DELIVERY_STREAM)
    defs, _ = repo()
    stream_job = defs.get_job_def(STREAM_JOB)

    # The enrichment stream, bounded: it drains and commits after max_seconds.
    enriched = stream_job.execute_in_process(
        run_config=stream_run_config(topics.NOTIFICATIONS, max_seconds=4),
        instance=instance,
        tags={"alert-platform/stream": topics.NOTIFICATIONS},
    )
    assert enriched.success
    lag = group_lag(
        settings,
        stream_group(settings.stream_group_prefix, topics.NOTIFICATIONS),
        topics.NOTIFICATIONS,
    )
    assert lag.records == 0 and sum(p.end for p in lag.partitions.values()) == len(demo.events)

    # The delivery stream, until interrupted (what Dagster's "Terminate" and SIGTERM deliver).
    interrupted: list[float] = []

    def interrupt_when_delivered() -> None:
        wait_for(lambda: set(posted_alert_ids(sandbox)) >= expected, 30, "the alerts in Slack")
        time.sleep(0.5)
        interrupted.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt_when_delivered, daemon=True)
    killer.start()
    delivered = stream_job.execute_in_process(
        run_config=stream_run_config(DELIVERY_STREAM), instance=instance, raise_on_error=False
    )
    returned = time.monotonic()
    killer.join(1)
    assert interrupted, "the delivery run ended before it was interrupted"
    assert not delivered.success
    assert returned - interrupted[0] < 10, f"drained in {returned - interrupted[0]:.1f} s"
    assert posted_alert_ids(sandbox) == sorted(expected)  # each exactly once
    slack_lag = group_lag(
        settings, stream_group(settings.stream_group_prefix, DELIVERY_STREAM), DELIVERY_STREAM
    )
    assert slack_lag.records == 0  # the drain committed what it delivered
    assert sum(probe_end_offsets(make_consumer(settings), DELIVERY_STREAM).values()) == len(
        expected
    )

    # Health: observations on the stream's assets, with the figures.
    (alerts_key,) = stream_asset_keys(topics.NOTIFICATIONS)
    seen = observations(instance, alerts_key)
    assert [o["status"] for o in seen if o["status"] == "started"] == ["started"]
    running = [o for o in seen if "events_per_s" in o]
    assert running, seen
    assert sum(int(o["records"]) for o in running) == len(demo.events)
    assert sum(int(o["alerts"]) for o in running) == len(expected)
    assert all({"alerts_per_min", "lag_by_partition", "lag_records"} <= set(o) for o in running)
    assert any("last_event_time" in o for o in running)
    deliveries = [o for o in observations(instance, AssetKey("slack_deliveries")) if "alerts" in o]
    assert sum(int(o["alerts"]) for o in deliveries) == len(expected)
    # One observation per report (interval 1 s, a few seconds of run), never one per batch.
    assert len(running) < 15


def test_terminating_the_run_process_drains_commits_and_cancels_the_run(
    stream_env: Settings, tmp_path: Path
) -> None:
    """The run launcher's "Terminate": the run is marked canceling, its process gets SIGTERM."""
    from assets.streams import STREAM_JOB, stream_run_config

    settings = stream_env
    demo = build_demo_data(event_count=10, seed=43)
    produce_lookup_tables(settings, demo)
    produce_events(settings, demo.events)
    commit_at_start(settings, topics.NOTIFICATIONS)
    group = stream_group(settings.stream_group_prefix, topics.NOTIFICATIONS)
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(stream_run_config(topics.NOTIFICATIONS)))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    command = [str(Path(sys.executable).parent / "dagster"), "job", "execute"]
    command += ["-m", "alert_platform.definitions", "-j", STREAM_JOB, "-c", str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Working: the group committed every record that was on the topic.
        def caught_up() -> bool:
            lag = group_lag(settings, group, topics.NOTIFICATIONS)
            committed = sum(p.committed or 0 for p in lag.partitions.values())
            return lag.records == 0 and committed >= len(demo.events)

        wait_for(caught_up, 60, "the worker run to catch up")
        with DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            assert run.status == DagsterRunStatus.STARTED
            instance.report_run_canceling(run)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(15)
            took = time.monotonic() - signalled
            status = instance.get_run_by_id(run.run_id).status  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    assert took < 10, f"the run took {took:.1f} s to drain\n{output[-3000:]}"
    assert "worker drained" in output, output[-3000:]
    assert status == DagsterRunStatus.CANCELED, output[-3000:]
    assert group_lag(settings, group, topics.NOTIFICATIONS).records == 0


def _tick(instance: DagsterInstance, cursor: str | None) -> SensorResult:
    defs, repository = repo()
    sensor_def = repository.get_sensor_def("stream_supervisor")
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=defs.resources, definitions=defs
    ) as context:
        result = sensor_def(context)
    assert isinstance(result, SensorResult)
    return result


def _check_history(instance: DagsterInstance, key: AssetCheckKey) -> list[bool]:
    records = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    return [bool(r.event.dagster_event.event_specific_data.passed) for r in records]  # type: ignore[union-attr]


def test_supervisor_keeps_one_run_per_stream_and_reports_checks_on_change(
    stream_env: Settings, instance: DagsterInstance
) -> None:
    from assets.streams import STREAM_FRESHNESS, STREAM_JOB, STREAM_LAG, stream_asset_keys
    from sensors.stream_supervisor import CHECK_EVALUATE_EVERY_S, STREAM_TAG
    from sensors.topic_tail import SOURCE_TAG

    defs, _ = repo()
    job_def = defs.get_job_def(STREAM_JOB)
    first = _tick(instance, None)
    requests = first.run_requests or []
    assert sorted(r.tags[STREAM_TAG] for r in requests) == sorted(all_streams())
    assert all(SOURCE_TAG not in r.tags for r in requests)
    assert len({r.run_key for r in requests}) == len(requests)
    runs = {
        r.tags[STREAM_TAG]: instance.create_run_for_job(
            job_def,
            run_config=r.run_config,
            tags={**r.tags, "dagster/run_key": r.run_key or ""},
            status=DagsterRunStatus.STARTED,
        )
        for r in requests
    }
    # Checks: reported on the first tick (nothing observed yet: freshness fails).
    (delivery_key,) = stream_asset_keys(DELIVERY_STREAM)
    fresh = AssetCheckKey(delivery_key, STREAM_FRESHNESS)
    lag = AssetCheckKey(delivery_key, STREAM_LAG)
    assert _check_history(instance, fresh) == [False]
    assert _check_history(instance, lag) == [True]

    # Every stream has a live run: nothing launched, nothing reported again.
    second = _tick(instance, first.cursor)
    assert not second.run_requests
    assert "every stream has a worker run" in str(second.skip_reason)
    assert _check_history(instance, fresh) == [False]

    # A failed and a canceled worker run are relaunched, the live one is not.
    source, other = topics.NOTIFICATIONS, topics.ONBOARDING_EVENTS
    instance.report_run_failed(runs[source])
    instance.report_run_canceled(runs[DELIVERY_STREAM])
    # A worker reports: the freshness verdict changes, seen and reported at the first tick
    # that measures again (at most every CHECK_EVALUATE_EVERY_S: a minute later, here).
    instance.report_runless_asset_event(AssetObservation(asset_key=delivery_key))
    assert _tick(instance, second.cursor).run_requests
    assert _check_history(instance, fresh) == [False]  # not measured again within the minute
    cursor = json.loads(second.cursor or "{}")
    cursor["evaluated_at"] -= CHECK_EVALUATE_EVERY_S
    third = _tick(instance, json.dumps(cursor))
    relaunched = third.run_requests or []
    assert sorted(r.tags[STREAM_TAG] for r in relaunched) == sorted([source, DELIVERY_STREAM])
    assert other not in {r.tags[STREAM_TAG] for r in relaunched}
    assert not {r.run_key for r in relaunched} & {r.run_key for r in requests}
    assert _check_history(instance, fresh) == [True, False]  # newest first
    assert _check_history(instance, lag) == [True]


def test_supervisor_launches_nothing_in_batch_mode(
    stream_env: Settings, instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assets.streams import STREAM_FRESHNESS, stream_asset_keys

    monkeypatch.setenv("ALERT_PLATFORM_MODE", "batch")
    defs, repository = repo()
    sensor_def = repository.get_sensor_def("stream_supervisor")
    with build_sensor_context(
        instance=instance, resources=defs.resources, definitions=defs
    ) as context:
        result = sensor_def(context)
    assert not isinstance(result, SensorResult) or not result.run_requests
    assert "ALERT_PLATFORM_MODE=batch" in str(getattr(result, "skip_reason", result))
    (key,) = stream_asset_keys(DELIVERY_STREAM)
    assert _check_history(instance, AssetCheckKey(key, STREAM_FRESHNESS)) == []


def test_lag_check_fails_on_a_lagging_group_and_passes_once_committed(
    stream_env: Settings, instance: DagsterInstance
) -> None:
    from assets.streams import STREAM_LAG, stream_asset_keys, stream_verdicts

    settings = stream_env.with_overrides(stream_lag_bound_s=1)
    topic = topics.ONBOARDING_EVENTS
    producer = BatchProducer.from_settings(settings)
    producer.produce_many(topic, ((f"k{i}".encode(), b"{}") for i in range(12)))
    producer.flush()
    ends = probe_end_offsets(make_consumer(settings), topic)
    commit_at(settings, topic, dict.fromkeys(ends, 0))
    (key,) = stream_asset_keys(topic)
    check = AssetCheckKey(key, STREAM_LAG)

    produced = sum(ends.values())
    assert produced >= 12
    patient = settings.with_overrides(stream_lag_bound_s=600)
    behind = stream_verdicts(instance, patient, streams=[topic])[check]
    assert behind.passed, behind.description  # behind, but younger than the bound
    time.sleep(1.5)
    lagging = stream_verdicts(instance, settings, streams=[topic])[check]
    assert not lagging.passed
    assert f"{produced} uncommitted record(s)" in lagging.description
    measured = group_lag(settings, stream_group(settings.stream_group_prefix, topic), topic)
    assert measured.records == produced and measured.lag_s is not None and measured.lag_s >= 1.5

    commit_at(settings, topic, ends)
    caught_up = stream_verdicts(instance, settings, streams=[topic])[check]
    assert caught_up.passed and "0 uncommitted record(s)" in caught_up.description


def test_the_stream_checks_run_from_dagster_too(
    stream_env: Settings, instance: DagsterInstance
) -> None:
    """What the UI's "Execute" of a check runs: the same verdicts, as check results."""
    from assets.streams import (
        STREAM_FRESHNESS,
        STREAM_LAG,
        stream_asset_keys,
        stream_health_checks,
        stream_of_assets,
    )

    defs, _ = repo()
    checks_job = define_asset_job(
        "stream_checks", selection=AssetSelection.checks(stream_health_checks)
    )
    merged = Definitions.merge(defs, Definitions(jobs=[checks_job]))
    (key,) = stream_asset_keys(DELIVERY_STREAM)
    instance.report_runless_asset_event(AssetObservation(asset_key=key))
    result = merged.resolve_job_def("stream_checks").execute_in_process(instance=instance)
    assert result.success
    evaluations = {
        (e.asset_key, e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }
    assert len(evaluations) == 2 * len(stream_of_assets())
    assert evaluations[(key, STREAM_FRESHNESS)] is True  # observed just now
    assert evaluations[(key, STREAM_LAG)] is True  # the group committed nothing: not judged
    (alerts_key,) = stream_asset_keys(topics.ONBOARDING_EVENTS)
    assert evaluations[(alerts_key, STREAM_FRESHNESS)] is False  # never observed
