"""Fixtures and helpers of the ops-notice and retention tests: a platform database on SQLite or
on the local PostgreSQL (in a schema of its own, selected by ``search_path``), a failing Dagster
run with range tags, and the run-failure sensor evaluated on it."""

import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import (
    Config,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    build_run_status_sensor_context,
    job,
    op,
)

from alert_platform.local.sandbox.control import SandboxControl
from tests.postgres import PG_URL


@pytest.fixture(name="state_db_url", params=["sqlite", "postgres"])
def state_db_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A platform database URL: SQLite in tmp, or PostgreSQL with a fresh schema first on the
    search path (every platform table lands there). PostgreSQL runs on every machine here: a
    missing one fails the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'platform.sqlite3'}"
        return
    schema = f"f_state_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def channel_posts(sandbox: SandboxControl, channel: str) -> list[str]:
    """Texts the sandbox accepted for ``channel`` (an id or ``#name``), in order."""
    return [message["text"] for message in sandbox.messages(channel)]


class StuckRangeConfig(Config):
    fail: bool = True


@op
def stuck_range_op(config: StuckRangeConfig) -> None:
    if config.fail:
        raise RuntimeError("poison record at notifications:0:12")


@job
def stuck_range_job() -> None:
    stuck_range_op()


def _run(instance: DagsterInstance, tags: Mapping[str, str], *, fail: bool) -> DagsterRun:
    result = stuck_range_job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags=dict(tags),
        run_config={"ops": {"stuck_range_op": {"config": {"fail": fail}}}},
    )
    assert result.success is not fail
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    return run


def fail_run(instance: DagsterInstance, tags: Mapping[str, str]) -> DagsterRun:
    """Execute ``stuck_range_job`` so that it fails, with ``tags``; the failed run."""
    return _run(instance, tags, fail=True)


def succeed_run(instance: DagsterInstance, tags: Mapping[str, str]) -> DagsterRun:
    """Execute ``stuck_range_job`` so that it succeeds, with ``tags``; the run."""
    return _run(instance, tags, fail=False)


def evaluate_success_sensor(
    instance: DagsterInstance, run: DagsterRun, resources: Mapping[str, object]
) -> None:
    """Evaluate ``ops_run_success_resolves`` on the success event of ``run``."""
    from sensors.run_failure import ops_run_success_resolves

    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_SUCCESS).records
    assert records, "the run has no RUN_SUCCESS event"
    event = records[0].event_log_entry.dagster_event
    assert event is not None
    context = build_run_status_sensor_context(
        sensor_name="ops_run_success_resolves",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
        resources=dict(resources),
    )
    ops_run_success_resolves(context)


def evaluate_failure_sensor(
    instance: DagsterInstance, run: DagsterRun, resources: Mapping[str, object]
) -> None:
    """Evaluate ``ops_run_failure_to_slack`` on the failure event of ``run``."""
    from sensors.run_failure import ops_run_failure_to_slack

    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert records, "the run has no RUN_FAILURE event"
    event = records[0].event_log_entry.dagster_event
    assert event is not None
    context = build_run_status_sensor_context(
        sensor_name="ops_run_failure_to_slack",
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
        resources=dict(resources),
    ).for_run_failure()
    ops_run_failure_to_slack(context)
