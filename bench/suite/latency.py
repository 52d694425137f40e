"""Section 2: end-to-end alert latency under `make dev` settings.

Starts the real ``alert-platform dev`` on free ports (its own data dir, default sensor and
instance settings, inline delivery on), waits for its banner and for the demo alerts (so the
code server and the first runs are warm), raises the sandbox's rate limit through its control
API, registers bench users (in the sandbox and on the lookup topics: each org's assignee has a
Slack user, spread over many DM channels), then produces provisioning-failure events, each
for its own connector (so each is its own alert), evenly spread over the window.

Latency per alert = the sandbox's receive time (message ``ts``; alert id from the message
metadata) minus the produce time (taken here, just before ``produce``). Split into stages with
the Dagster run records of ``DAGSTER_HOME`` (the run whose offset ranges hold the event) and
the alert's ``created_at`` on ``slack-messages``:

* sensor: produce -> run created (waiting for the tail sensor's tick, its evaluation);
* launch: run created -> run started (queue, dequeue, run worker process start-up);
* enrichment: run started -> alert ``created_at`` (table catch-up, read, enrich);
* delivery: ``created_at`` -> received by Slack (write + flush, inline delivery).

Then, once no enrichment run is in flight (at most 30 s), dev is stopped with SIGINT, as Ctrl-C
would, and must say it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean, median
from typing import Any

import orjson

from alert_platform import topics
from alert_platform.kafka.clients import make_producer
from alert_platform.local.demo import build_demo_data
from alert_platform.local.ports import find_free_port
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.stack import free_port_settings
from alert_platform.settings import Settings
from alert_platform.wire import decode_slack_message, parse_rfc3339
from bench.suite.common import REPO, log, percentile, read_topic

TARGET_P50_S = 10.0
TARGET_P99_S = 20.0
USERS = 50
METADATA_EVENT_TYPE = "alert_platform_alert"
_ENV_PREFIXES = ("ALERT_PLATFORM_", "KAFKA_", "SLACK_", "BIGQUERY_", "DAGSTER_", "ALERT_")
STAGES = ("sensor", "launch", "enrichment", "delivery")
# "launch" split in two: waiting in the run queue (one run per source topic at a time, so
# mostly for the previous run to finish), and the run worker's start-up once dequeued.
LAUNCH_PARTS = ("queued", "worker_start")


def _dev_env(settings: Settings, dagster_port: int, mode: str | None = None) -> dict[str, str]:
    """`make dev` defaults, except the ports (nothing inherited that changes behaviour) and,
    when given, the mode (``ALERT_PLATFORM_MODE``: ``batch`` for the sensor-run baseline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.pop("CONNECTOR_CONSOLE_URL_TEMPLATE", None)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "SLACK_API_URL": settings.slack_api_url,
            "BIGQUERY_API_ENDPOINT": settings.bigquery_api_endpoint,
            "DAGSTER_PORT": str(dagster_port),
        }
    )
    if mode:
        env["ALERT_PLATFORM_MODE"] = mode
    return env


def _alert_messages(sandbox: SandboxControl) -> dict[str, float]:
    """alert id -> receive time (epoch seconds) of the first message posted for it."""
    out: dict[str, float] = {}
    for message in sandbox.messages():
        metadata = message.get("metadata") or {}
        if metadata.get("event_type") != METADATA_EVENT_TYPE:
            continue
        alert_id = (metadata.get("event_payload") or {}).get("alert_id")
        if alert_id and alert_id not in out:
            out[alert_id] = float(message["ts"])
    return out


def _expected_demo_alerts(event_count: int = 20) -> int:
    demo = build_demo_data(event_count)
    alerts = set()
    for org_id, event in demo.events:
        labels = json.loads(event["data"])["labels"]
        if labels["connector_old_status"] == "Provisioning" and org_id in demo.assignments:
            alerts.add(f"{org_id}-{labels['env_id']}-{labels['connector_id']}")
    return len(alerts)


def _wait(predicate, timeout: float, process: subprocess.Popen[bytes], what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"alert-platform dev exited ({process.returncode}) during {what}")
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _register_users(settings: Settings, sandbox: SandboxControl) -> list[str]:
    """USERS bench users with Slack accounts, each assigned one org; returns the org ids."""
    producer = make_producer(settings)
    orgs = []
    for i in range(USERS):
        user_id, email = f"U0BENCH{i:03d}", f"bench.user{i:03d}@example.com"
        name, org_id = f"Bench User {i}", f"org-e2e-{i:03d}"
        sandbox.add_user(user_id, email, name)
        user = {"email": email, "slack_user_id": user_id, "name": name}
        assignment = {
            "org_id": org_id,
            "csdr_email": email,
            "csdr_name": name,
            "account_name": f"E2E Account {i}",
        }
        producer.produce(topics.SLACK_USERS, key=email.encode(), value=orjson.dumps(user))
        producer.produce(
            topics.CSDR_ASSIGNMENT, key=org_id.encode(), value=orjson.dumps(assignment)
        )
        orgs.append(org_id)
    if producer.flush(30):
        raise RuntimeError("bench lookup records were not delivered")
    return orgs


def _event(org_id: str, connector_id: str, number: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    labels = {
        "connector_old_status": "Provisioning",
        "connector_new_status": "Failed",
        "org_id": org_id,
        "env_id": "env-e2e",
        "connector_id": connector_id,
        "connector_name": f"e2e-sink-{number:03d}",
    }
    return {
        "id": f"evt-{connector_id}",
        "type": "io.confluent.connect.connector.status",
        "time": now,
        "data": json.dumps({"labels": labels}),
    }


def _produce_spread(
    settings: Settings, orgs: list[str], events: int, spread_s: float
) -> dict[str, dict[str, Any]]:
    """Produce ``events`` events evenly over ``spread_s``; alert id -> produce facts."""
    token = uuid.uuid4().hex[:8]
    producer = make_producer(settings)
    sent: dict[str, dict[str, Any]] = {}
    start = time.monotonic()
    for k in range(events):
        due = start + k * spread_s / events
        time.sleep(max(0.0, due - time.monotonic()))
        org_id, connector_id = orgs[k % len(orgs)], f"lcc-e2e-{token}-{k:03d}"
        alert_id = f"{org_id}-env-e2e-{connector_id}-connector-failure"
        facts: dict[str, Any] = {}

        def delivered(err, message, facts=facts) -> None:
            if err is None:
                facts["partition"], facts["offset"] = message.partition(), message.offset()

        facts["produced"] = time.time()
        producer.produce(
            topics.NOTIFICATIONS,
            key=org_id.encode(),
            value=orjson.dumps(_event(org_id, connector_id, k)),
            on_delivery=delivered,
        )
        producer.flush(10)
        sent[alert_id] = facts
    return sent


def _created_at(settings: Settings, wanted: set[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for record in read_topic(settings, topics.SLACK_MESSAGES):
        message = decode_slack_message(record.value)
        alert_id = message.alert_id
        if alert_id in wanted and alert_id not in out:
            out[alert_id] = parse_rfc3339(message.created_at, "created_at").timestamp()
    return out


def _runs_created(dagster_home: Path, start: float, end: float) -> dict[str, int]:
    """How many Dagster runs were created in ``[start, end]`` (epoch s), by job."""
    from datetime import datetime

    from dagster import DagsterInstance, RunsFilter

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        window = RunsFilter(
            created_after=datetime.fromtimestamp(start, UTC),
            created_before=datetime.fromtimestamp(end, UTC),
        )
        by_job: dict[str, int] = {}
        for record in instance.get_run_records(filters=window):
            job = record.dagster_run.job_name
            by_job[job] = by_job.get(job, 0) + 1
        return by_job
    finally:
        instance.dispose()


def _run_records(dagster_home: Path) -> list[dict[str, Any]]:
    """Each enrichment run: created/started/ended (epoch s), status, ranges."""
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        records = instance.get_run_records(
            filters=RunsFilter(job_name="connector_failure_alerts_job")
        )
        runs = []
        for record in records:
            created = record.create_timestamp
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            ops = (record.dagster_run.run_config or {}).get("ops", {})
            ranges = [r for op in ops.values() for r in op.get("config", {}).get("ranges", [])]
            # RUN_STARTING: dequeued and handed to the run launcher
            dequeued = [
                entry.timestamp
                for entry in instance.all_logs(
                    record.dagster_run.run_id, of_type=DagsterEventType.RUN_STARTING
                )
            ]
            error = None
            if record.dagster_run.status.value == "FAILURE":
                failures = instance.all_logs(
                    record.dagster_run.run_id,
                    of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE},
                )
                messages = [
                    str(getattr(entry.dagster_event.event_specific_data, "error", None) or "")
                    or entry.message
                    for entry in failures
                    if entry.dagster_event is not None
                ]
                error = (messages[0] if messages else "unknown")[:400]
            runs.append(
                {
                    "created": created.timestamp(),
                    "error": error,
                    "dequeued": min(dequeued) if dequeued else None,
                    "started": record.start_time,
                    "ended": record.end_time,
                    "status": record.dagster_run.status.value,
                    "ranges": ranges,
                    "records": sum(r["end"] - r["start"] for r in ranges),
                }
            )
        return runs
    finally:
        instance.dispose()


def _run_for(runs: list[dict[str, Any]], partition: int, offset: int) -> dict[str, Any] | None:
    holding = [
        run
        for run in runs
        if any(
            r["partition"] == partition and r["start"] <= offset < r["end"] for r in run["ranges"]
        )
    ]
    succeeded = [run for run in holding if run["status"] == "SUCCESS"]
    pool = succeeded or holding
    return max(pool, key=lambda run: run["created"]) if pool else None


def _wait_runs_done(dagster_home: Path, timeout: float) -> bool:
    """Wait until no enrichment run is queued or running (so stopping dev interrupts none)."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    active = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = instance.get_runs(
                filters=RunsFilter(job_name="connector_failure_alerts_job", statuses=active)
            )
            if not runs:
                return True
            time.sleep(1.0)
        return False
    finally:
        instance.dispose()


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> bool:
    """SIGINT like Ctrl-C; True when dev said it stopped everything."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            return False
        except ProcessLookupError:
            pass
    return "Stopped Dagster and the local stack." in log_path.read_text(errors="replace")


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its descendants: utime + stime + cutime + cstime
    of every live process of the tree (``/proc/PID/stat``), so a run process that ended and was
    waited for is still counted, in its parent's children's time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / ticks
    return total


def run_latency(
    events: int = 200, spread_s: float = 120.0, *, mode: str | None = None
) -> dict[str, Any]:
    """The whole measurement; returns figures, per-alert samples and the verdict. ``mode``:
    dev's ``ALERT_PLATFORM_MODE`` (default: dev's own default)."""
    result: dict[str, Any] = {"events": events, "spread_s": spread_s, "problems": []}
    if mode:
        result["mode"] = mode
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        settings = free_port_settings(root / "data")
        dagster_port = find_free_port()
        log_path = root / "dev.log"
        started = time.monotonic()
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "alert_platform.cli", "dev", "--data-dir",
                 str(settings.data_dir)],
                cwd=REPO,
                env=_dev_env(settings, dagster_port, mode),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        sandbox = SandboxControl(settings.slack_api_url)
        sent: dict[str, dict[str, Any]] = {}
        received: dict[str, float] = {}
        created: dict[str, float] = {}
        clean = False
        try:
            if not _wait(
                lambda: "Press Ctrl-C" in log_path.read_text(errors="replace"),
                240,
                process,
                "start-up",
            ):
                raise RuntimeError("alert-platform dev printed no banner within 240 s")
            result["startup_s"] = round(time.monotonic() - started, 1)
            log(f"  dev is up ({result['startup_s']}s); waiting for the demo alerts")
            sandbox.set_rate_limit(1000.0, burst=1000)
            orgs = _register_users(settings, sandbox)
            demo = _expected_demo_alerts()
            warm = _wait(lambda: len(_alert_messages(sandbox)) >= demo, 120, process, "warm-up")
            result["warm"] = warm
            log(f"  producing {events} events over {spread_s:.0f}s")
            cpu_before, window_start = tree_cpu_s(process.pid), time.time()
            sent = _produce_spread(settings, orgs, events, spread_s)
            window = time.time() - window_start
            result["window_s"] = round(window, 1)
            result["platform_cores"] = round((tree_cpu_s(process.pid) - cpu_before) / window, 3)
            result["window_started"] = window_start
            _wait(lambda: set(sent) <= set(_alert_messages(sandbox)), 120, process, "delivery")
            received = {k: v for k, v in _alert_messages(sandbox).items() if k in sent}
            created = _created_at(settings, set(sent))
            result["runs_done_before_stop"] = _wait_runs_done(
                settings.data_dir.resolve() / "dagster", 30
            )
        except RuntimeError as exc:
            result["problems"].append(str(exc))
        finally:
            result["stop_requested"] = time.time()
            clean = _stop(process, log_path)
        result["clean_stop"] = clean
        if not clean:
            result["problems"].append("dev did not report a clean stop")
        try:
            if "window_started" in result:
                result["window_runs_by_job"] = _runs_created(
                    settings.data_dir.resolve() / "dagster",
                    result["window_started"],
                    result["window_started"] + result["window_s"],
                )
                result["window_runs"] = sum(result["window_runs_by_job"].values())
            runs = _run_records(settings.data_dir.resolve() / "dagster")
        except Exception as exc:  # no instance (dev never started): no stage split
            result["problems"].append(f"run records unavailable: {exc}")
            runs = []
    return _analyse(result, sent, received, created, runs)


def _analyse(
    result: dict[str, Any],
    sent: dict[str, dict[str, Any]],
    received: dict[str, float],
    created: dict[str, float],
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    latencies = []
    stages: dict[str, list[float]] = {stage: [] for stage in (*STAGES, *LAUNCH_PARTS)}
    for alert_id, facts in sent.items():
        if alert_id not in received:
            continue
        total = received[alert_id] - facts["produced"]
        latencies.append(total)
        run = _run_for(runs, facts.get("partition", -1), facts.get("offset", -1))
        made = created.get(alert_id)
        if run is None or made is None or run["started"] is None:
            continue
        stages["sensor"].append(run["created"] - facts["produced"])
        stages["launch"].append(run["started"] - run["created"])
        if run["dequeued"] is not None:
            stages["queued"].append(run["dequeued"] - run["created"])
            stages["worker_start"].append(run["started"] - run["dequeued"])
        stages["enrichment"].append(made - run["started"])
        stages["delivery"].append(received[alert_id] - made)
    result["delivered"] = len(latencies)
    result["runs"] = len(runs)
    if len(latencies) < len(sent) or not sent:
        result["problems"].append(f"{len(sent) - len(latencies)} of {len(sent)} alerts missing")
    if latencies:
        result["latency_s"] = {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
            "mean": fmean(latencies),
        }
    if stages["sensor"]:
        total_mean = sum(fmean(stages[stage]) for stage in STAGES)
        result["stages"] = {
            stage: {
                "mean_s": fmean(values),
                "median_s": median(values),
                "share": fmean(values) / total_mean if total_mean else 0.0,
            }
            for stage, values in stages.items()
            if values
        }
        result["stage_samples"] = len(stages["sensor"])
    ours = [run for run in runs if run["started"] and run["ended"]]
    statuses: dict[str, int] = {}
    for run in runs:
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1
    result["run_statuses"] = statuses
    stop = result.get("stop_requested") or float("inf")
    result["failed_runs"] = [
        {
            "ended_after_stop_requested": bool(run["ended"] and run["ended"] >= stop),
            "records": run["records"],
            "error": run["error"],
        }
        for run in runs
        if run["status"] == "FAILURE"
    ]
    if ours:
        result["run_figures"] = {
            "runs": len(ours),
            "median_run_s": median(run["ended"] - run["started"] for run in ours),
            "median_records_per_run": median(run["records"] for run in ours),
            "median_created_to_ended_s": median(run["ended"] - run["created"] for run in ours),
        }
    figures = result.get("latency_s")
    result["pass"] = bool(
        figures
        and not result["problems"]
        and figures["p50"] < TARGET_P50_S
        and figures["p99"] < TARGET_P99_S
    )
    return result
