"""Stream workers as real OS processes for the stream fault scenarios.

:class:`StreamProcess` runs ``.venv/bin/alert-platform stream <stream>...`` configured only by
environment variables (:func:`worker_env`), against a flow test's broker, the session Slack
sandbox and a ledger file the test reads too; the test SIGKILLs it, SIGTERMs it (drain) and
starts replacements, as a supervisor would.

The local Kafka profile (``ALERT_PLATFORM_KAFKA_PROFILE=local``) is applied *after* the
``KAFKA_*`` pass-through in ``Settings.kafka_client_config``, so it would turn
``KAFKA_SESSION_TIMEOUT_MS=2000`` back into 6000: the children run the default profile with
the local profile's properties spelled out through the pass-through, and the tests' faster
group timings (2 s session, 500 ms heartbeat: a join in ~1 s, a dead member noticed in 2 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer, make_producer
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from tests.faults.harness import (
    ALERT_EVENT_TYPE,
    Burst,
    Org,
    add_sandbox_users,
    alert_id_of,
    connector_failure_event,
    lookup_records,
    read_topic,
    with_fault_injection,
)

CLI = Path(sys.executable).with_name("alert-platform")
# tests/faults/inject/sitecustomize.py: SIGKILL a stream worker after its processor finished the
# batch that brought it to this many records, before the loop commits that batch.
CRASH_BEFORE_STREAM_COMMIT_ENV = "ALERT_PLATFORM_TEST_CRASH_BEFORE_STREAM_COMMIT"
# Environment prefixes the platform reads: the children get only what worker_env sets.
_PLATFORM_PREFIXES = ("KAFKA_", "SLACK_", "ALERT_", "BIGQUERY_", "DAGSTER_")
FAST_GROUP = {
    "KAFKA_FETCH_WAIT_MAX_MS": "10",
    "KAFKA_SESSION_TIMEOUT_MS": "2000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
}
_ASSIGNED = re.compile(r"alert_platform\.stream (\S+): assigned \[([0-9, ]*)\]")
_REVOKED = re.compile(r"alert_platform\.stream (\S+): revoked \[([0-9, ]*)\]")


def worker_env(settings: Settings, group_prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process: the test stack's endpoints, a ledger the test
    shares, Slack pacing raised (the sandbox's rate limit is off), fast group timings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_PLATFORM_PREFIXES)}
    return {
        **base,
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ALERT_PLATFORM_KAFKA_PROFILE": "default",
        **FAST_GROUP,
        "SLACK_API_URL": settings.slack_api_url,
        "SLACK_BOT_TOKEN": settings.slack_bot_token.get_secret_value(),
        "ALERT_PLATFORM_DATA_DIR": str(settings.data_dir),
        "ALERT_LEDGER_URL": settings.effective_ledger_url,
        "ALERT_PLATFORM_STREAM_GROUP_PREFIX": group_prefix,
        "SLACK_CHANNEL_RATE_PER_S": "1000",
        "SLACK_CHANNEL_BURST": "1000",
        # A dead worker's claims go stale after 15 s (the least allowed), not 60 s.
        "ALERT_PLATFORM_DELIVERY_LEASE_S": "15",
        "SLACK_CALL_TIMEOUT_S": "5",
        "ALERT_PLATFORM_STREAM_HEALTH_INTERVAL_S": "5",
        **extra,
    }


class StreamProcess:
    """One ``alert-platform stream`` process; its output goes to ``log_path``."""

    def __init__(
        self, name: str, streams: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.streams = list(streams)
        self.env = dict(env)
        if any(k.startswith("ALERT_PLATFORM_TEST_CRASH") for k in self.env):
            self.env = with_fault_injection(self.env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.exited_at: float | None = None  # monotonic, when first seen gone

    def start(self) -> StreamProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(CLI), "stream", *self.streams],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def returncode(self) -> int | None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None and self.exited_at is None:
            self.exited_at = time.monotonic()
        return code

    def alive(self) -> bool:
        return self.returncode() is None

    def assignments(self) -> list[list[int]]:
        """Every ``assigned [...]`` the worker logged, in order (cooperative: increments)."""
        return [_partitions(m.group(2)) for m in _ASSIGNED.finditer(self.output())]

    def revocations(self) -> list[list[int]]:
        return [_partitions(m.group(2)) for m in _REVOKED.finditer(self.output())]

    def owned(self) -> set[int]:
        """The partitions the worker holds now, by its log."""
        events = [(m.start(), "+", m.group(2)) for m in _ASSIGNED.finditer(self.output())]
        events += [(m.start(), "-", m.group(2)) for m in _REVOKED.finditer(self.output())]
        held: set[int] = set()
        for _at, sign, raw in sorted(events):
            parts = set(_partitions(raw))
            held = held | parts if sign == "+" else held - parts
        return held

    def wait_joined(self, timeout: float = 30.0) -> None:
        """Until the worker logged its first assignment (it is in its group)."""
        deadline = time.monotonic() + timeout
        while not self.assignments():
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.returncode()}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no assignment in {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> float:
        """SIGKILL; the wall-clock time it was sent (comparable with Slack's ``ts``)."""
        at = time.time()
        os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)
        return at

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM and wait for the exit; the seconds the drain took."""
        assert self.process is not None
        started = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        self.process.wait(timeout)
        return time.monotonic() - started

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self.returncode()
        return code

    def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL after 15 s (only this process, by its pid)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.process.wait(10)

    def tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]


def _partitions(raw: str) -> list[int]:
    return [int(p) for p in raw.replace(" ", "").split(",") if p]


@contextlib.contextmanager
def stopping(procs: list[StreamProcess]) -> Iterator[list[StreamProcess]]:
    """Stops every process of ``procs`` (also those appended inside the block) on exit."""
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


# -- Kafka --------------------------------------------------------------------------------------


def committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition (absent: nothing committed)."""
    consumer: Consumer = make_consumer(settings, group_id=group)
    try:
        asked = [TopicPartition(topic, p) for p in range(partitions)]
        answer = consumer.committed(asked, timeout=10)
        return {tp.partition: tp.offset for tp in answer if tp.offset >= 0}
    finally:
        consumer.close()


def produce_to(
    settings: Settings,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    *,
    partition: int | None = None,
    per_second: float | None = None,
) -> int:
    """Produce ``records`` (to ``partition`` when given), at most ``per_second`` of them a
    second; flush and raise on any undelivered record."""
    producer = make_producer(settings)
    errors: list[str] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            errors.append(str(error))

    started = time.monotonic()
    count = 0
    for key, value in records:
        if per_second:
            delay = started + count / per_second - time.monotonic()
            if delay > 0:
                producer.poll(0)
                time.sleep(delay)
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery, **extra)
        producer.poll(0)
        count += 1
    left = producer.flush(30)
    if left or errors:
        raise RuntimeError(f"{left} undelivered, errors {errors[:3]} producing to {topic}")
    return count


def seed_orgs(settings: Settings, sandbox: SandboxControl, orgs: Sequence[Org]) -> None:
    """The orgs' Slack users in the sandbox, their assignment and user records on the tables."""
    add_sandbox_users(sandbox, orgs)
    for topic, records in lookup_records(orgs).items():
        produce_to(settings, topic, records)


def warm_up(
    settings: Settings,
    orgs: Sequence[Org],
    tag: str,
    groups: Sequence[tuple[str, str]],
    *,
    partitions: int = 4,
    timeout: float = 30.0,
) -> Burst:
    """One provisioning failure per partition of the source topic, again every 2 s, until
    every ``(group, topic)`` has committed all ``partitions``: the workers are assigned and
    each partition has a committed position (a group with none starts at the end, which is
    the catch-up runs' share, not the stream's). The alerts it made."""
    made = Burst()
    deadline = time.monotonic() + timeout
    round_ = 0
    while True:
        events = []
        for partition in range(partitions):
            org = orgs[(round_ * partitions + partition) % len(orgs)]
            connector = f"lcc-{tag}-warm-{round_}-{partition}"
            event = connector_failure_event(org.org_id, connector, number=partition)
            events.append((partition, (org.org_id.encode(), json.dumps(event).encode())))
            made.expected.add(alert_id_of(org.org_id, "env-1", connector))
            made.events.append(events[-1][1])
        for partition, record in events:
            produce_to(settings, topics.NOTIFICATIONS, [record], partition=partition)
        round_ += 1
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            if all(
                len(committed(settings, group, topic, partitions)) == partitions
                for group, topic in groups
            ):
                return made
            time.sleep(0.2)
        if time.monotonic() > deadline:
            raise AssertionError(f"groups {groups} did not commit every partition in {timeout} s")


def slack_message_ids(settings: Settings) -> list[str]:
    """The alert id of every slack-messages record (repeats included; foreign ones skipped)."""
    out = []
    for record in read_topic(settings, topics.SLACK_MESSAGES):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            out.append(str(json.loads(record.value or b"")["alert_id"]))
    return out


# -- the sandbox ----------------------------------------------------------------------------------


def arrivals(sandbox: SandboxControl) -> dict[str, list[float]]:
    """alert id -> the Slack ``ts`` (epoch seconds) of each message posted for it."""
    out: dict[str, list[float]] = {}
    for message in sandbox.messages():
        meta = message.get("metadata") or {}
        if meta.get("event_type") != ALERT_EVENT_TYPE:
            continue
        out.setdefault(meta["event_payload"]["alert_id"], []).append(float(message["ts"]))
    return out


def wait_all_posted(
    sandbox: SandboxControl,
    expected: set[str],
    procs: Sequence[StreamProcess],
    live: Sequence[StreamProcess],
    timeout: float,
) -> dict[str, list[float]]:
    """Until every ``expected`` alert is in the sandbox (``live`` must stay alive); then 3 s
    more, for a late duplicate to land. The arrivals; on a timeout the missing and the logs."""
    seen: dict[str, list[float]] = {}

    def done() -> bool:
        nonlocal seen
        seen = arrivals(sandbox)
        for proc in live:
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
        return expected <= set(seen)

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            missing = sorted(expected - set(seen))
            logs = "\n".join(f"--- {p.name}\n{p.tail(1500)}" for p in procs)
            raise AssertionError(f"{len(missing)} alerts missing after {timeout} s, e.g. "
                                 f"{missing[:3]}\n{logs}")  # fmt: skip
        time.sleep(0.2)
    time.sleep(3)  # a late duplicate (a batch repeated by a new owner) would land here
    return arrivals(sandbox)
