"""Drive the real platform for fault tests.

:class:`DevPlatform` runs ``alert-platform dev`` in a subprocess on free ports (as
``tests/integration/test_dev_command.py`` does) with extra environment, and offers what the
scenarios need: the Slack sandbox's control API, Kafka helpers, the run-worker processes of
this instance (children of its code server), a reader of the run events Dagster logs, and the
Dagster instance itself. :func:`burst` builds connector events whose expected alerts are
known exactly (unique connector ids, so no two events share an alert id).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.kafka.reader import read_range
from alert_platform.kafka.records import SourceRecord
from alert_platform.local.demo import build_demo_data
from alert_platform.local.ports import find_free_port
from alert_platform.local.sandbox.control import SandboxControl, SandboxMessage
from alert_platform.local.stack import free_port_settings
from alert_platform.settings import Settings

ALERT_EVENT_TYPE = "alert_platform_alert"  # metadata of alerts (ops notices carry none)
EVENT_TYPE = "io.confluent.connect.connector.status"
ENRICH_JOB = "connector_failure_alerts_job"
DELIVERY_JOB = "slack_delivery_job"
BACKOFF_ENV = "ALERT_PLATFORM_RETRY_BACKOFF_BASE_S"
LEASE_ENV = "ALERT_PLATFORM_DELIVERY_LEASE_S"
# Crash injection (tests/faults/inject/sitecustomize.py), armed in a child process's environment
# together with with_fault_injection(): SIGKILL right after Slack accepted this alert id (before
# the ledger write) / exit before a delivery run flushes its slack-responses records.
INJECT_DIR = Path(__file__).resolve().parent / "inject"
CRASH_ENV = "ALERT_PLATFORM_TEST_CRASH_AFTER_POST"
CRASH_BEFORE_FLUSH_ENV = "ALERT_PLATFORM_TEST_CRASH_BEFORE_RESPONSES_FLUSH"
CRASH_BEFORE_FLUSH_EXIT = 70
# The file the crash-after-post hook appends its pid to before it kills the process.
CRASH_MARKER_ENV = "ALERT_PLATFORM_TEST_CRASH_MARKER"


def with_fault_injection(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the crash-injection directory first on ``PYTHONPATH`` (so that the child
    and every Python process it starts import its ``sitecustomize``)."""
    path = [str(INJECT_DIR), *filter(None, (env.get("PYTHONPATH") or "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(path)}


# -- orgs and events --------------------------------------------------------------------------


@dataclass(frozen=True)
class Org:
    """An org, its assignment row (None: unassigned) and the assignee's Slack user (None: the
    alert goes to the fallback channel)."""

    org_id: str
    assignment: dict[str, str] | None
    user: dict[str, str] | None = None


def demo_orgs() -> list[Org]:
    """The demo orgs ``alert-platform dev`` seeds (one unassigned, one without Slack user)."""
    demo = build_demo_data(0)
    users = {email.lower(): row for email, row in demo.slack_users.items()}
    orgs = []
    for index in range(1, 13):
        org_id = f"org-{index:04d}"
        row = demo.assignments.get(org_id)
        user = users.get(row["csdr_email"].lower()) if row else None
        orgs.append(Org(org_id, row, user))
    return orgs


def fault_orgs(prefix: str, count: int) -> list[Org]:
    """``count`` orgs, each assigned to its own Slack user (its own delivery lane)."""
    orgs = []
    for index in range(count):
        org_id = f"{prefix}-org-{index:03d}"
        email = f"csdr.{prefix}.{index:03d}@example.com"
        name = f"CSDR {prefix} {index:03d}"
        user_id = f"U{prefix.upper()[:4]}{index:04d}"
        assignment = {
            "org_id": org_id,
            "csdr_email": email,
            "csdr_name": name,
            "account_name": f"Account {prefix} {index:03d}",
        }
        user = {"email": email, "slack_user_id": user_id, "name": name}
        orgs.append(Org(org_id, assignment, user))
    return orgs


def alert_id_of(org_id: str, env_id: str, connector_id: str) -> str:
    return f"{org_id}-{env_id}-{connector_id}-connector-failure"


@dataclass
class Burst:
    """Events as ``(key, value)`` and the alert ids they must produce."""

    events: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    expected: set[str] = field(default_factory=set)

    def __add__(self, other: Burst) -> Burst:
        return Burst(self.events + other.events, self.expected | other.expected)


def connector_failure_event(
    org_id: str,
    connector_id: str,
    *,
    old_status: str = "Provisioning",
    env_id: str = "env-1",
    name: str = "orders-sink",
    when: datetime | None = None,
    number: int = 0,
) -> dict[str, Any]:
    """A notification event as upstream writes it (``data`` as a JSON string)."""
    when = when or datetime.now(UTC)
    labels = {
        "connector_old_status": old_status,
        "connector_new_status": "Failed",
        "org_id": org_id,
        "env_id": env_id,
        "connector_id": connector_id,
        "connector_name": name,
    }
    return {
        "id": f"evt-{org_id}-{connector_id}-{number}",
        "type": EVENT_TYPE,
        "time": (when - timedelta(milliseconds=number)).isoformat().replace("+00:00", "Z"),
        "data": json.dumps({"labels": labels}),
    }


def burst(
    orgs: Sequence[Org],
    count: int,
    *,
    tag: str,
    seed: int,
    provisioning_share: float = 0.3,
) -> Burst:
    """``count`` connector events over ``orgs`` (uniformly), ~``provisioning_share`` of them
    provisioning failures; expected alerts: the provisioning failures of assigned orgs."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out = Burst()
    for number in range(count):
        org = orgs[rng.randrange(len(orgs))]
        provisioning = rng.random() < provisioning_share
        env_id = f"env-{rng.randint(1, 3)}"
        connector_id = f"lcc-{tag}-{number}"
        event = connector_failure_event(
            org.org_id,
            connector_id,
            old_status="Provisioning" if provisioning else "Running",
            env_id=env_id,
            name=rng.choice(["orders-sink", "billing-cdc", "s3-archive", "crm-source"]),
            when=now,
            number=number,
        )
        out.events.append((org.org_id.encode(), json.dumps(event).encode()))
        if provisioning and org.assignment is not None:
            out.expected.add(alert_id_of(org.org_id, env_id, connector_id))
    return out


# -- Kafka ------------------------------------------------------------------------------------


def produce(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
) -> int:
    """Produce ``(key, value)`` records and flush; raise if any was not delivered."""
    producer = make_producer(settings)
    errors: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    count = 0
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
        count += 1
    remaining = producer.flush(60)
    if remaining or errors:
        raise RuntimeError(f"{remaining} undelivered, errors {errors[:3]} producing to {topic}")
    return count


def lookup_records(orgs: Iterable[Org]) -> dict[str, list[tuple[bytes, bytes]]]:
    """The assignment and Slack-user records of ``orgs`` per lookup topic."""
    assignments, users = [], []
    for org in orgs:
        if org.assignment is not None:
            assignments.append((org.org_id.encode(), json.dumps(org.assignment).encode()))
        if org.user is not None:
            users.append((org.user["email"].encode(), json.dumps(org.user).encode()))
    return {topics.CSDR_ASSIGNMENT: assignments, topics.SLACK_USERS: users}


def read_topic(settings: Settings, topic: str, *, timeout_s: float = 30.0) -> list[SourceRecord]:
    """Every record of ``topic`` (all partitions, from offset 0 to the probed end)."""
    consumer = make_consumer(settings)
    try:
        out: list[SourceRecord] = []
        for partition, end in sorted(probe_end_offsets(consumer, topic).items()):
            rng = OffsetRange(topic, partition, 0, end)
            for batch in read_range(consumer, rng, timeout_s=timeout_s):
                out.extend(batch)
        return out
    finally:
        consumer.close()


# -- Slack sandbox ----------------------------------------------------------------------------


def alert_messages(sandbox: SandboxControl) -> list[SandboxMessage]:
    """The posted alerts (ops-channel notices carry no alert metadata)."""
    return [
        m
        for m in sandbox.messages()
        if (m.get("metadata") or {}).get("event_type") == ALERT_EVENT_TYPE
    ]


def posted_alert_ids(sandbox: SandboxControl) -> list[str]:
    return [m["metadata"]["event_payload"]["alert_id"] for m in alert_messages(sandbox)]  # type: ignore[index]


def add_sandbox_users(sandbox: SandboxControl, orgs: Iterable[Org]) -> None:
    """Make every org's Slack user known to the sandbox (``users`` seed of the demo exists)."""
    seeded = {u["id"] for u in build_demo_users()}
    for org in orgs:
        if org.user is not None and org.user["slack_user_id"] not in seeded:
            sandbox.add_user(org.user["slack_user_id"], org.user["email"], org.user["name"])


def build_demo_users() -> list[dict[str, str]]:
    from alert_platform.local.demo import slack_workspace

    return slack_workspace()["users"]


# -- waiting ----------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 1.0,
    alive: Callable[[], None] | None = None,
) -> None:
    """Poll ``predicate`` until true; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- processes --------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every live process (Linux /proc)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] in ("Z", "X"):
            continue
        table[int(entry.name)] = (int(fields[1]), cmdline)
    return table


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> set[int]:
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cmd) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


# -- Dagster's run log ------------------------------------------------------------------------

_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EVENT = re.compile(r"[A-Z][A-Z_]+")


@dataclass
class RunInfo:
    """What the log told about one run."""

    run_id: str
    job: str
    pid: int | None = None
    step_started: bool = False
    enriched: bool = False  # the enrichment run logged its counts (inline delivery follows)
    finished: bool = False
    events: list[str] = field(default_factory=list)


class RunLog:
    """Follows ``DATA_DIR/logs/dagster.log``: the run workers write their events there (lines
    ``... - dagster - DEBUG - JOB - RUN_ID - PID - [STEP - ]EVENT - message``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buffer = b""
        self.runs: dict[str, RunInfo] = {}

    def poll(self) -> dict[str, RunInfo]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return self.runs
        self.offset += len(chunk)
        data = self.buffer + chunk
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        for raw in lines:
            self._parse(raw.decode("utf-8", "replace"))
        return self.runs

    def _parse(self, line: str) -> None:
        parts = line.split(" - ")
        if len(parts) < 6 or parts[1] != "dagster" or not _RUN_ID.fullmatch(parts[4]):
            return
        level, job, run_id = parts[2], parts[3], parts[4]
        info = self.runs.get(run_id)
        if info is None:
            info = self.runs[run_id] = RunInfo(run_id, job)
        if level == "INFO":
            message = " - ".join(parts[6:])
            if message.startswith("connector_failure: {"):
                info.enriched = True
            return
        if level != "DEBUG" or not parts[5].isdigit() or len(parts) < 7:
            return
        info.pid = int(parts[5])
        event = parts[6] if _EVENT.fullmatch(parts[6]) else (parts[7] if len(parts) > 7 else "")
        info.events.append(event)
        if event == "STEP_START":
            info.step_started = True
        elif event in ("RUN_SUCCESS", "RUN_FAILURE", "STEP_SUCCESS", "STEP_FAILURE"):
            info.finished = True


# -- the platform -----------------------------------------------------------------------------


class DevPlatform:
    """``alert-platform dev`` on free ports under ``root``, with ``env`` added."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, demo_events: int = 0):
        self.root = root
        self.settings = free_port_settings(root / "data")
        self.dagster_port = find_free_port()
        self.log_path = root / "dev.log"
        self.demo_events = demo_events
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
            "SLACK_API_URL": self.settings.slack_api_url,
            "BIGQUERY_API_ENDPOINT": self.settings.bigquery_api_endpoint,
            "DAGSTER_PORT": str(self.dagster_port),
            **(env or {}),
        }
        if any(name in self.env for name in (CRASH_ENV, CRASH_BEFORE_FLUSH_ENV)):
            self.env = with_fault_injection(self.env)
        for name in ("SLACK_BOT_TOKEN", "DAGSTER_HOME", "ALERT_PLATFORM_DATA_DIR"):
            if name not in (env or {}):
                self.env.pop(name, None)
        self.process: subprocess.Popen[bytes] | None = None
        self.sandbox = SandboxControl(self.settings.slack_api_url)
        self.run_log = RunLog(self.data_dir / "logs" / "dagster.log")

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 240.0) -> DevPlatform:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alert_platform.cli",
                "dev",
                "--data-dir",
                str(self.data_dir),
                "--demo-events",
                str(self.demo_events),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        banner = lambda: "Press Ctrl-C" in self.output()  # noqa: E731
        wait_for(banner, timeout, "the dev banner", alive=self.alive)
        return self

    def alive(self) -> None:
        """Raise when the dev process has exited."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"alert-platform dev exited ({code}):\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    # -- seeding -------------------------------------------------------------------------------

    def seed_orgs(self, orgs: Sequence[Org]) -> None:
        """Sandbox users plus assignment and Slack-user records for ``orgs``."""
        add_sandbox_users(self.sandbox, orgs)
        for topic, records in lookup_records(orgs).items():
            produce(self.settings, topic, records)

    def produce_events(self, events: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        return produce(self.settings, topics.NOTIFICATIONS, events)

    # -- observing -----------------------------------------------------------------------------

    def posted(self) -> list[str]:
        return posted_alert_ids(self.sandbox)

    def run_workers(self) -> dict[int, str]:
        """pid -> command line of this instance's run workers (code-server children)."""
        assert self.process is not None
        table = _proc_table()
        mine = descendants(self.process.pid, table)
        workers = {}
        for pid in mine:
            ppid, cmd = table[pid]
            parent = table.get(ppid, (0, ""))[1]
            if "spawn_main" in cmd and "dagster api grpc" in parent:
                workers[pid] = cmd
        return workers

    @contextlib.contextmanager
    def instance(self) -> Iterator[Any]:
        from dagster import DagsterInstance

        instance = DagsterInstance.from_config(str(self.dagster_home))
        try:
            yield instance
        finally:
            instance.dispose()

    def wait_for_alerts(self, expected: set[str], timeout: float) -> list[str]:
        """Wait until every expected alert id is posted; return the posted ids."""
        posted: list[str] = []

        def done() -> bool:
            nonlocal posted
            posted = self.posted()
            return expected <= set(posted)

        try:
            wait_for(done, timeout, "every expected alert in the sandbox", interval=2.0,
                     alive=self.alive)  # fmt: skip
        except AssertionError as exc:
            missing = sorted(expected - set(posted))
            raise AssertionError(f"{exc}: {len(missing)} missing, e.g. {missing[:5]}") from None
        return posted
