"""Stream mode at a trickle and under a burst: latency produce -> Slack sandbox, CPU, exactly once.

One local stack (Tansu broker + Slack sandbox on free ports, its own data dir). The workers are
the real ``alert-platform stream --local`` command (every stream: the source topics and
``slack-messages``), a subprocess pointed at the stack by environment variables, so its CPU is
its own: utime + stime of the process (all its threads, ``/proc/PID/stat``), and the broker's
the same way, sampled at the start and the end of the window.

* trickle: one bench user per event (each org assigned to its own Slack user, so each alert is
  its own DM channel and Slack pacing queues nothing), production pacing and the sandbox's
  default limit; events produced evenly at ``rate`` per second for ``seconds``;
* burst: ``alerts`` events to ``users`` users as fast as one producer goes, a second worker
  process started with the pacing raised (``SLACK_CHANNEL_RATE_PER_S``/``_BURST``) and the
  sandbox's limit raised through its control API.

Latency per alert = the sandbox message's ``ts`` (its receive time) minus the produce time
(taken just before ``produce``), as ``bench/suite/latency.py`` does for the batch path. Every
alert must be in the sandbox exactly once. Before each window the worker is warmed up: one
warm-up event at a time until one reaches the sandbox (the groups start at the end of their
topics, so this also proves both groups are assigned).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import orjson
from confluent_kafka import Producer

from alert_platform import topics
from alert_platform.kafka.admin import create_topics
from alert_platform.kafka.clients import make_producer
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.sandbox.state import DEFAULT_BURST, DEFAULT_PER_SECOND
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.settings import Settings
from bench.host_cpu import process_cpu_s
from bench.suite.common import REPO, log, percentile
from bench.suite.latency import METADATA_EVENT_TYPE, _event

_ENV_PREFIXES = ("ALERT_PLATFORM_", "KAFKA_", "SLACK_", "BIGQUERY_", "DAGSTER_", "ALERT_")
WARMUP_ORGS = 40
DRAINED_LINE = "stream workers drained and stopped"


@dataclass
class Stack:
    """The stack of this section and its processes."""

    settings: Settings
    stack: LocalStack
    sandbox: SandboxControl
    root: Path

    def pid(self, service: str) -> int | None:
        return self.stack.process(service).pid


@contextlib.contextmanager
def local_stack(root: Path) -> Iterator[Stack]:
    settings = free_port_settings(root / "data")
    stack = LocalStack(settings, die_with_parent=True)
    stack.up(["kafka", "slack"])
    try:
        create_topics(settings)
        sandbox = SandboxControl(settings.slack_api_url)
        sandbox.wait_ready(15)
        yield Stack(settings, stack, sandbox, root)
    finally:
        stack.down(["kafka", "slack"])


def register_users(stack: Stack, prefix: str, count: int) -> list[str]:
    """``count`` users, in the sandbox and on the lookup topics, each assigned one org."""
    producer = make_producer(stack.settings)
    orgs = []
    for i in range(count):
        user_id, email = f"U0{prefix.upper()}{i:05d}", f"{prefix}.user{i:05d}@example.com"
        name, org_id = f"{prefix} user {i}", f"org-{prefix}-{i:05d}"
        stack.sandbox.add_user(user_id, email, name)
        user = {"email": email, "slack_user_id": user_id, "name": name}
        assignment = {
            "org_id": org_id,
            "csdr_email": email,
            "csdr_name": name,
            "account_name": f"{prefix} account {i}",
        }
        producer.produce(topics.SLACK_USERS, key=email.encode(), value=orjson.dumps(user))
        producer.produce(
            topics.CSDR_ASSIGNMENT, key=org_id.encode(), value=orjson.dumps(assignment)
        )
        orgs.append(org_id)
    if producer.flush(30):
        raise RuntimeError("bench lookup records were not delivered")
    return orgs


def alert_id(org_id: str, connector_id: str) -> str:
    return f"{org_id}-env-e2e-{connector_id}-connector-failure"


def posted(sandbox: SandboxControl) -> tuple[Counter[str], dict[str, float]]:
    """How often each alert id was posted, and the first receive time (epoch s) of each."""
    counts: Counter[str] = Counter()
    first: dict[str, float] = {}
    for message in sandbox.messages():
        metadata = message.get("metadata") or {}
        if metadata.get("event_type") != METADATA_EVENT_TYPE:
            continue
        aid = (metadata.get("event_payload") or {}).get("alert_id")
        if aid:
            counts[aid] += 1
            first.setdefault(aid, float(message["ts"]))
    return counts, first


class StreamProcess:
    """``alert-platform stream --local`` against the stack, with extra environment."""

    def __init__(self, stack: Stack, name: str, extra_env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": stack.settings.bootstrap_servers,
                "SLACK_API_URL": stack.settings.slack_api_url,
                "ALERT_PLATFORM_DATA_DIR": str(stack.settings.data_dir.resolve()),
                **(extra_env or {}),
            }
        )
        self.log_path = stack.root / f"{name}.log"
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "alert_platform.cli", "stream", "--local"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM (drain); how long it took, its exit status, whether it said it drained."""
        started = time.monotonic()
        if self.alive():
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        text = self.log_path.read_text(errors="replace")
        return {
            "drain_s": round(time.monotonic() - started, 2),
            "returncode": self.process.returncode,
            "drained": DRAINED_LINE in text and self.process.returncode == 0,
            "log_tail": "\n".join(text.strip().splitlines()[-5:]),
        }


def warm_up(
    stack: Stack, worker: StreamProcess, producer: Producer, timeout: float = 90.0
) -> float:
    """Warm-up events, one every 1.5 s, until one is in the sandbox; seconds it took. Also
    warms ``producer`` up (an idempotent producer's first send waits for its producer id)."""
    orgs = register_users(stack, f"w{uuid.uuid4().hex[:4]}", WARMUP_ORGS)
    started = time.monotonic()
    sent: set[str] = set()
    k = 0
    while time.monotonic() - started < timeout:
        if not worker.alive():
            raise RuntimeError(f"the stream worker exited: {worker.stop()['log_tail']}")
        org_id, connector_id = orgs[k % len(orgs)], f"lcc-warm-{uuid.uuid4().hex[:8]}"
        producer.produce(
            topics.NOTIFICATIONS,
            key=org_id.encode(),
            value=orjson.dumps(_event(org_id, connector_id, k)),
        )
        producer.flush(10)
        sent.add(alert_id(org_id, connector_id))
        k += 1
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if sent & set(posted(stack.sandbox)[0]):
                return time.monotonic() - started
            time.sleep(0.1)
    raise RuntimeError(f"no warm-up alert reached the sandbox within {timeout:.0f} s")


def _cpu(pids: dict[str, int | None]) -> dict[str, float]:
    return {name: process_cpu_s(pid) if pid else 0.0 for name, pid in pids.items()}


def _latencies(sent: dict[str, float], first: dict[str, float]) -> dict[str, float]:
    values = [first[a] - t for a, t in sent.items() if a in first]
    if not values:
        return {}
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": fmean(values),
    }


def _delivery_check(stack: Stack, sent: dict[str, float], timeout: float) -> dict[str, Any]:
    """Wait for every sent alert; then the counts (missing, duplicated) and latencies."""
    deadline = time.monotonic() + timeout
    while True:
        counts, first = posted(stack.sandbox)
        if set(sent) <= set(counts) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(1.0)  # a late duplicate would show up now
    counts, first = posted(stack.sandbox)
    missing = [a for a in sent if a not in counts]
    done = [first[a] for a in sent if a in first]
    duplicated = [a for a in sent if counts[a] > 1]
    return {
        "sent": len(sent),
        "delivered": len(sent) - len(missing),
        "missing": len(missing),
        "duplicated": len(duplicated),
        "exactly_once": not missing and not duplicated,
        "latency_s": _latencies(sent, first),
        # per alert in produce order (None: never delivered)
        "samples_s": [round(first[a] - t, 4) if a in first else None for a, t in sent.items()],
        "last_delivered_after_last_produce_s": (
            round(max(done) - max(sent.values()), 3) if done else None
        ),
    }


def trickle(stack: Stack, rate: float, seconds: float, idle_s: float) -> dict[str, Any]:
    """The trickle window: latency and CPU of the stream worker process and the broker."""
    events = max(1, round(rate * seconds))
    orgs = register_users(stack, f"t{uuid.uuid4().hex[:4]}", events)
    worker = StreamProcess(stack, "stream-trickle")
    result: dict[str, Any] = {"rate_per_s": rate, "seconds": seconds, "events": events}
    try:
        producer = make_producer(stack.settings)
        result["warm_up_s"] = round(warm_up(stack, worker, producer), 2)
        pids = {"stream": worker.pid, "broker": stack.pid("kafka"), "sandbox": stack.pid("slack")}
        time.sleep(2.0)  # the warm-up alert's own work settles
        if idle_s > 0:
            before, t0 = _cpu(pids), time.monotonic()
            time.sleep(idle_s)
            after, wall = _cpu(pids), time.monotonic() - t0
            result["idle_cores"] = {k: (after[k] - before[k]) / wall for k in pids}
            result["idle_s"] = round(wall, 1)
        log(f"  trickle: {events} events at {rate}/s over {seconds:.0f} s")
        token = uuid.uuid4().hex[:8]
        sent: dict[str, float] = {}
        before, t0 = _cpu(pids), time.monotonic()
        for k in range(events):
            time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
            org_id, connector_id = orgs[k], f"lcc-st-{token}-{k:05d}"
            produced = time.time()
            producer.produce(
                topics.NOTIFICATIONS,
                key=org_id.encode(),
                value=orjson.dumps(_event(org_id, connector_id, k)),
            )
            producer.flush(10)
            sent[alert_id(org_id, connector_id)] = produced
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        after, wall = _cpu(pids), time.monotonic() - t0
        result["window_s"] = round(wall, 1)
        result["cpu_s"] = {k: after[k] - before[k] for k in pids}
        result["cores"] = {k: (after[k] - before[k]) / wall for k in pids}
        result["cores"]["platform"] = result["cores"]["stream"] + result["cores"]["broker"]
        result.update(_delivery_check(stack, sent, 30.0))
    finally:
        result["stop"] = worker.stop()
    return result


def burst(stack: Stack, alerts: int, users: int) -> dict[str, Any]:
    """``alerts`` events to ``users`` users at once, pacing and sandbox limit raised."""
    orgs = register_users(stack, f"b{uuid.uuid4().hex[:4]}", users)
    stack.sandbox.set_rate_limit(1000.0, burst=1000)
    raised = {"SLACK_CHANNEL_RATE_PER_S": "1000", "SLACK_CHANNEL_BURST": "1000"}
    worker = StreamProcess(stack, "stream-burst", raised)
    result: dict[str, Any] = {"alerts": alerts, "users": users}
    try:
        producer = make_producer(stack.settings)
        result["warm_up_s"] = round(warm_up(stack, worker, producer), 2)
        time.sleep(1.0)
        log(f"  burst: {alerts} alerts to {users} users")
        token = uuid.uuid4().hex[:8]
        sent: dict[str, float] = {}
        t0 = time.monotonic()
        for k in range(alerts):
            org_id, connector_id = orgs[k % users], f"lcc-sb-{token}-{k:05d}"
            sent[alert_id(org_id, connector_id)] = time.time()
            producer.produce(
                topics.NOTIFICATIONS,
                key=org_id.encode(),
                value=orjson.dumps(_event(org_id, connector_id, k)),
            )
            producer.poll(0)
        producer.flush(30)
        result["produce_s"] = round(time.monotonic() - t0, 3)
        result.update(_delivery_check(stack, sent, 120.0))
    finally:
        result["stop"] = worker.stop()
        stack.sandbox.set_rate_limit(DEFAULT_PER_SECOND, burst=DEFAULT_BURST)
    return result
