"""What every measurement shares: the workload, a fresh broker, the setup, child runs, checks."""

from __future__ import annotations

import contextlib
import gc
import importlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from alert_platform import topics
from alert_platform.kafka.admin import create_topics
from alert_platform.kafka.clients import (
    PRODUCER_DEFAULTS,
    consumer_config,
    make_consumer,
    producer_config,
)
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.kafka.reader import read_range
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer
from alert_platform.local.profile import LOCAL_ENVIRONMENT, local_environment, local_settings
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.pipelines.connector_failure import CONNECTOR_FAILURE
from alert_platform.pipelines.engine import BatchCounts, enrich_batch
from alert_platform.pipelines.runner import RUN_CONSUMER_CONFIG
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.settings import LOCAL_KAFKA_PROFILE, Settings
from alert_platform.tables.lookup import LookupTable
from alert_platform.tables.specs import TABLE_SPECS
from alert_platform.tables.topic_loader import refresh_snapshot
from alert_platform.topics import TopicSpec
from alert_platform.wire import decode_slack_message
from bench.bench_engine import WORKLOAD_MAX_PAST_HOURS

REPO = Path(__file__).resolve().parents[2]
CONSOLE_URL = "https://console.example/{org_id}/{env_id}/connectors/{connector_id}"
RAW_OUTPUT = "bench-raw-copy"
# Contenders warm their idempotent producer up here before the clock starts: its first delivery
# waits ~1 s for a producer id on the local broker (the alert-platform run pays that inside).
WARMUP_TOPIC = "bench-warmup"
BATCH = 10_000
CHILD_TIMEOUT_S = 300.0


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- workload ---------------------------------------------------------------------------------


def make_workload_fn():
    """The shared generator: ``bench/workload.py`` when it exists, else ``bench_engine``'s."""
    for module in ("bench.workload", "bench.bench_engine"):
        with contextlib.suppress(ImportError, AttributeError):
            return importlib.import_module(module).make_workload
    raise ImportError("no workload generator (bench/workload.py or bench/bench_engine.py)")


@dataclass
class Workload:
    """The fixed-seed events and tables, and what the platform's engine makes of them."""

    records: list[SourceRecord]
    tables: dict[str, LookupTable]
    expected: BatchCounts
    # source index (position in ``records``) -> digest of the expected message
    digests: dict[int, int] = field(default_factory=dict)
    avg_bytes: float = 0.0

    @property
    def size(self) -> int:
        return len(self.records)


def render_options() -> RenderOptions:
    return RenderOptions(console_url_template=CONSOLE_URL)


def build_workload(events: int) -> Workload:
    made = make_workload_fn()(events)
    if isinstance(made, tuple):
        records, tables = made
    else:  # an object with the two parts
        records, tables = made.records, made.tables
    expected = BatchCounts()
    digests: dict[int, int] = {}
    options = render_options()
    for start in range(0, len(records), BATCH):
        result = enrich_batch(CONNECTOR_FAILURE, records[start : start + BATCH], tables, options)
        expected = expected + result.counts
        for alert in result.alerts:
            index = alert.source.offset  # the generator numbers records 0..n-1
            digests[index] = message_digest(orjson.loads(alert.value), index)
    sizes = [len(r.value) for r in records if r.value]
    return Workload(records, tables, expected, digests, sum(sizes) / max(len(sizes), 1))


def message_digest(value: dict[str, Any], index: int) -> int:
    """Digest of a ``slack-messages`` value without ``created_at``, its source position
    replaced by the workload index (layouts differ in partition/offset, not in content)."""
    value = dict(value)
    value.pop("created_at", None)
    source = value.pop("source", None) or {}
    value["source"] = [source.get("topic"), index, source.get("timestamp")]
    return hash(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def write_tables_json(workload: Workload, path: Path) -> Path:
    """The lookup tables as plain JSON objects (key -> row) for the framework contenders."""
    document = {name: dict(table.items()) for name, table in workload.tables.items()}
    path.write_bytes(orjson.dumps(document))
    return path


# -- broker and setup -------------------------------------------------------------------------


def base_settings() -> Settings:
    return local_settings(
        connector_console_url_template=CONSOLE_URL,
        event_time_max_past_hours=WORKLOAD_MAX_PAST_HOURS,
    )


@contextlib.contextmanager
def fresh_broker(root: Path, name: str) -> Iterator[Settings]:
    """A throw-away Tansu broker on a free port, its state under ``root/name``."""
    data_dir = root / name
    settings = free_port_settings(data_dir, base_settings())
    stack = LocalStack(settings, die_with_parent=True)
    stack.up(["kafka"])
    try:
        yield settings
    finally:
        gc.collect()  # drop unreferenced Kafka clients before their broker goes away
        stack.down(["kafka"])
        shutil.rmtree(data_dir, ignore_errors=True)


def partition_of(index: int, partitions: int) -> tuple[int, int]:
    """Where record ``index`` lands: (partition, offset) when produced round-robin."""
    return index % partitions, index // partitions


def index_of(partition: int, offset: int, partitions: int) -> int:
    return offset * partitions + partition


def produce_all(
    producer: BatchProducer,
    items: Sequence[tuple[str, bytes | None, bytes | None, int | None, int]],
) -> None:
    """Produce (topic, key, value, partition or None, timestamp ms or 0), then flush."""
    for topic, key, value, partition, timestamp in items:
        producer.produce(topic, key, value, partition=partition, timestamp_ms=timestamp or None)
    producer.flush(180)  # ProduceError names what was not delivered


def prepare(
    settings: Settings, workload: Workload, partitions: int, *, snapshots: bool = True
) -> dict[int, int]:
    """Topics, lookup tables (topics and snapshots) and the events, on a fresh broker.

    Events go round-robin to ``partitions`` partitions with their own timestamps. Returns the
    true end offset per partition, checked against what was produced.
    """
    specs = [
        TopicSpec(spec.name, partitions, dict(spec.config))
        if spec.name == topics.NOTIFICATIONS
        else spec
        for spec in topics.ALL_TOPICS
    ]
    create_topics(settings, [*specs, TopicSpec(RAW_OUTPUT, 4), TopicSpec(WARMUP_TOPIC, 1)])
    producer = BatchProducer.from_settings(settings, **{"queue.buffering.max.messages": 500_000})
    rows = []
    for name, table in workload.tables.items():
        spec = TABLE_SPECS[name]
        for _key, row in table.items():
            rows.append((spec.topic, row[spec.key_field].encode(), orjson.dumps(row), None, 0))
    produce_all(producer, rows)
    if snapshots:
        for name in workload.tables:
            loaded = refresh_snapshot(settings, TABLE_SPECS[name])
            if len(loaded.table) != len(workload.tables[name]):
                raise RuntimeError(f"{name}: snapshot holds {len(loaded.table)} rows")
    produce_all(
        producer,
        [
            (
                topics.NOTIFICATIONS,
                record.key,
                record.value,
                i % partitions,
                record.timestamp_ms,
            )
            for i, record in enumerate(workload.records)
        ],
    )
    del producer
    want = {p: 0 for p in range(partitions)}
    for i in range(workload.size):
        want[i % partitions] += 1
    ends = topic_ends(settings, topics.NOTIFICATIONS)
    if ends != want:
        raise RuntimeError(f"{topics.NOTIFICATIONS} ends {ends}, produced {want}")
    return ends


def topic_ends(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings)
    try:
        return dict(probe_end_offsets(consumer, topic))
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str) -> Iterator[SourceRecord]:
    """Every record of ``topic``, partition by partition, up to the probed ends."""
    ends = topic_ends(settings, topic)
    consumer = make_consumer(settings, **RUN_CONSUMER_CONFIG)
    try:
        for partition, end in sorted(ends.items()):
            for batch in read_range(consumer, OffsetRange(topic, partition, 0, end), BATCH):
                yield from batch
    finally:
        consumer.close()


@dataclass
class ContentCheck:
    checked: int = 0
    mismatched: int = 0
    unexpected: int = 0
    missing: int = 0

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.unexpected or self.missing)

    def describe(self) -> str:
        if self.ok:
            return f"all {self.checked:,} messages identical to alert-platform's engine"
        return (
            f"{self.mismatched:,} differ, {self.unexpected:,} unexpected, "
            f"{self.missing:,} missing of {self.checked:,}"
        )


def check_content(
    settings: Settings, topic: str, workload: Workload, partitions: int
) -> ContentCheck:
    """Compare every message on ``topic`` with the engine's message for the same event; one
    that does not fit the ``slack-messages`` contract (``alert_platform.wire``) differs."""
    check = ContentCheck()
    seen: set[int] = set()
    for record in read_topic(settings, topic):
        check.checked += 1
        value = orjson.loads(record.value)
        try:
            decode_slack_message(record.value)
        except ValueError:  # msgspec's DecodeError / ValidationError
            check.mismatched += 1
            continue
        source = value.get("source") or {}
        index = index_of(source.get("partition", -1), source.get("offset", -1), partitions)
        want = workload.digests.get(index)
        if want is None or index in seen:
            check.unexpected += 1
            continue
        seen.add(index)
        if message_digest(value, index) != want:
            check.mismatched += 1
    check.missing = len(workload.digests) - len(seen)
    return check


# -- client settings per contender -------------------------------------------------------------


def client_configs(settings: Settings) -> dict[str, dict[str, Any]]:
    """Kafka client settings: the platform's own for raw, the same tuning for the frameworks.

    Every contender gets the settings the local broker needs (``fetch.wait.max.ms=10``, the
    short group timeouts) and the platform's reader (``fetch.queue.backoff.ms=10``) and
    producer (idempotent, acks=all, linger 10 ms, lz4) settings.
    """
    tuning = {**LOCAL_KAFKA_PROFILE, **RUN_CONSUMER_CONFIG}
    return {
        "raw_consumer": consumer_config(settings, **RUN_CONSUMER_CONFIG),
        "raw_producer": producer_config(settings),
        "framework_consumer": {k: str(v) for k, v in tuning.items()},
        "framework_producer": {k: str(v).lower() if isinstance(v, bool) else str(v)
                               for k, v in PRODUCER_DEFAULTS.items()},
    }  # fmt: skip


# -- child processes ---------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


def run_child(
    module: str,
    job: Mapping[str, Any],
    job_path: Path,
    *,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = CHILD_TIMEOUT_S,
) -> dict[str, Any]:
    """Run ``python -m module JOB`` in the repo; its last stdout line is a JSON result."""
    job_path.write_bytes(orjson.dumps(job))
    command = [python or sys.executable, "-m", module, str(job_path)]
    try:
        done = subprocess.run(
            command,
            cwd=REPO,
            env={**local_environment(os.environ), **(env or {}), "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildError(f"{module} did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise ChildError(f"{module} exited {done.returncode}: {tail}")
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise ChildError(f"{module} printed no result: {done.stdout[-500:]}")
    return orjson.loads(lines[-1])


def platform_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Environment that points alert-platform (and Dagster) at a bench broker and data dir."""
    from alert_platform.local.dev import dagster_instance_yaml

    home = data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_instance_yaml())
    return {
        **LOCAL_ENVIRONMENT,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ALERT_PLATFORM_KAFKA_PROFILE": "local",
        "ALERT_PLATFORM_DATA_DIR": str(data_dir.resolve()),
        "ALERT_PLATFORM_INLINE_DELIVERY": "false",
        "ALERT_EVENT_TIME_MAX_PAST_HOURS": str(WORKLOAD_MAX_PAST_HOURS),
        "CONNECTOR_CONSOLE_URL_TEMPLATE": CONSOLE_URL,
        "ALERT_LEDGER_URL": "",
        "DAGSTER_HOME": str(home.resolve()),
        # The Slack resource needs a token; with inline delivery off no call is made (and the
        # URL leads nowhere, so none could reach a real sandbox).
        "SLACK_BOT_TOKEN": settings.slack_bot_token.get_secret_value(),
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
    }


# -- statistics --------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f}s"
