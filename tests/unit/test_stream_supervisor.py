"""The stream supervisor's decisions without a broker: which streams get a run, when a check
verdict is reported, the lag verdict of a measured group, the observation figures, and the
op's driver (stop after max_seconds, drain on an interrupt, a worker crash raised)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from alert_platform.stream.lag import GroupLag, PartitionLag, lag_check
from alert_platform.stream.loop import LoopStats, PartitionState, StreamHealth
from alert_platform.stream.names import DELIVERY_STREAM, all_streams, source_streams
from assets.streams import (
    drive,
    observation_metadata,
    stream_asset_keys,
    stream_of_assets,
    stream_run_config,
)
from sensors.stream_supervisor import (
    STREAM_TAG,
    Reported,
    dump_cursor,
    parse_cursor,
    reports_due,
    stream_run_request,
    streams_to_launch,
)
from sensors.topic_tail import SOURCE_TAG


def test_only_streams_without_a_live_run_get_one() -> None:
    streams = ["a", "b", "c"]
    assert streams_to_launch(streams, {}) == streams
    assert streams_to_launch(streams, {"a": 1, "b": 0, "c": 2}) == ["b"]
    assert streams_to_launch(streams, {"a": 1, "b": 1, "c": 1}) == []


def test_run_requests_are_tagged_per_stream_with_a_key_per_launch() -> None:
    first = stream_run_request("notifications", 1000.0)
    again = stream_run_request("notifications", 1015.0)
    assert first.tags == {STREAM_TAG: "notifications"}
    assert SOURCE_TAG not in first.tags  # not the batch runs' concurrency tag
    assert first.run_key != again.run_key
    assert first.run_config == {"ops": {"alert_stream": {"config": {"stream": "notifications"}}}}
    assert stream_run_config("x", 3)["ops"]["alert_stream"]["config"] == {
        "stream": "x",
        "max_seconds": 3,
    }


def test_every_stream_has_assets_and_each_asset_one_stream() -> None:
    assets = stream_of_assets()
    assert sorted(set(assets.values())) == sorted(all_streams())
    assert [k.to_user_string() for k in stream_asset_keys(DELIVERY_STREAM)] == ["slack_deliveries"]
    for stream in source_streams():
        keys = stream_asset_keys(stream)
        assert keys and all(k.to_user_string().endswith("_alerts") for k in keys)


def test_a_verdict_is_reported_when_new_changed_or_due() -> None:
    previous = {"a:lag": Reported(True, 1000.0), "b:lag": Reported(False, 1000.0)}
    verdicts = {"a:lag": True, "b:lag": True, "c:lag": False}
    assert reports_due(previous, verdicts, 1010.0) == ["b:lag", "c:lag"]
    assert reports_due(previous, {"a:lag": True}, 1299.0) == []
    assert reports_due(previous, {"a:lag": True}, 1300.0) == ["a:lag"]


def test_the_cursor_round_trips_and_a_bad_one_reports_everything() -> None:
    state = {"a:lag": Reported(True, 12.5), "b:freshness": Reported(False, 3.0)}
    assert parse_cursor(dump_cursor(state)) == state
    for bad in (None, "", "not json", "[1]", '{"checks": {"a": []}}', '{"checks": 3}'):
        assert parse_cursor(bad) == {}


def _lag(*partitions: PartitionLag, at: float = 100.0) -> GroupLag:
    return GroupLag("g", "t", {p.partition: p for p in partitions}, at)


def test_the_lag_verdict_judges_the_oldest_uncommitted_record() -> None:
    caught_up = _lag(PartitionLag(0, 10, 10), PartitionLag(1, 4, 4))
    assert caught_up.records == 0 and caught_up.lag_s is None
    assert lag_check(caught_up, 30).passed

    behind = _lag(PartitionLag(0, 10, 25, (10, 95_000)), PartitionLag(1, 4, 6, (4, 50_000)))
    assert behind.records == 17
    assert behind.lag_s == pytest.approx(50.0)
    assert behind.by_partition() == {"0": 15, "1": 2}
    verdict = lag_check(behind, 30)
    assert not verdict.passed
    assert "17 uncommitted record(s)" in verdict.description
    assert lag_check(behind, 60).passed


def test_partitions_never_committed_are_named_not_judged() -> None:
    lag = _lag(PartitionLag(0, None, 40), PartitionLag(1, None, 0), PartitionLag(2, 3, 3))
    assert lag.never_committed == [0]
    assert lag.records == 0
    assert lag.by_partition() == {"0": None, "1": None, "2": 0}
    verdict = lag_check(lag, 30)
    assert verdict.passed and "[0] never committed" in verdict.description


def _health(records: int = 120, outputs: int = 6) -> StreamHealth:
    return StreamHealth(
        stream="notifications",
        group="p.notifications",
        member="stream:notifications:run",
        interval_s=60.0,
        records=records,
        outputs=outputs,
        batches=4,
        failures=0,
        partitions={0: PartitionState(committed=7, last_timestamp_ms=1_700_000_000_000)},
        last_event_ms=1_700_000_000_000,
    )


def test_observation_metadata_has_the_figures_and_the_group_lag() -> None:
    lag = _lag(PartitionLag(0, 7, 9, (7, 99_000)))
    metadata = observation_metadata(_health(), lag, "running")
    assert metadata["status"] == "running"
    assert metadata["events_per_s"] == 2.0
    assert metadata["alerts_per_min"] == 6.0
    assert metadata["last_event_time"].value == 1_700_000_000.0
    assert metadata["lag_records"] == 2
    assert metadata["lag_by_partition"].value == {"0": 2}
    assert metadata["lag_s"] == 1.0
    started = observation_metadata(None, None, "started")
    assert started == {"status": "started"}


class FakeWorker:
    """Stands in for a StreamWorker: reports health every ``every_s`` until stopped."""

    stream = "notifications"

    def __init__(self, reports: queue.Queue, every_s: float = 0.05, crash: bool = False):
        self.reports = reports
        self.every_s = every_s
        self.crash = crash
        self.stopped_at: float | None = None

    def run(self, stop: threading.Event) -> LoopStats:
        while not stop.wait(self.every_s):
            if self.crash:
                raise RuntimeError("broker gone")
            self.reports.put(_health())
        self.stopped_at = time.monotonic()
        time.sleep(0.1)  # the batch in hand, the commit
        self.reports.put(_health(records=0))  # the loop's last report
        return LoopStats(records=1)


def test_drive_stops_after_max_seconds_and_hands_every_report_over() -> None:
    reports: queue.Queue = queue.Queue()
    worker = FakeWorker(reports)
    seen: list[StreamHealth] = []
    started = time.monotonic()
    stats = drive(worker, threading.Event(), reports, seen.append, max_seconds=0.5)  # type: ignore[arg-type]
    assert 0.5 <= time.monotonic() - started < 2
    assert stats.records == 1
    assert len(seen) >= 3 and seen[-1].records == 0  # the final report too


def test_drive_drains_on_an_interrupt_then_raises_it() -> None:
    reports: queue.Queue = queue.Queue()
    worker = FakeWorker(reports)
    stop = threading.Event()
    seen: list[StreamHealth] = []

    def on_report(health: StreamHealth) -> None:
        seen.append(health)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what Dagster's termination raises in the op's thread

    with pytest.raises(KeyboardInterrupt):
        drive(worker, stop, reports, on_report)  # type: ignore[arg-type]
    assert stop.is_set() and worker.stopped_at is not None
    assert seen[-1].records == 0  # the drained worker's last report was still handed over


def test_drive_raises_a_worker_crash() -> None:
    reports: queue.Queue = queue.Queue()
    with pytest.raises(RuntimeError, match="broker gone"):
        drive(FakeWorker(reports, crash=True), threading.Event(), reports, lambda h: None)  # type: ignore[arg-type]


def test_each_stream_workers_failures_are_an_incident_of_their_own() -> None:
    from dagster import DagsterRun

    from sensors.run_failure import failure_keys
    from sensors.stream_supervisor import STREAM_TAG

    def run(tags: dict[str, str]) -> DagsterRun:
        return DagsterRun(job_name="alert_stream_job", run_id="r1", tags=tags)

    notifications = failure_keys(run({STREAM_TAG: "data-notifications-pipeline"}))
    deliveries = failure_keys(run({STREAM_TAG: "slack-messages"}))
    assert notifications == ["run-failure:alert_stream_job:stream:data-notifications-pipeline"]
    assert deliveries != notifications
    assert failure_keys(run({})) == ["run-failure:alert_stream_job:-"]
