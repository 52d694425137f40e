"""Engine-only benchmark: enrich an in-memory workload, no Kafka.

    .venv/bin/python bench/bench_engine.py [--events 500000] [--batch 10000] [--repeat 3]

Workload (fixed seed): 50,000 orgs of which 90% have an assignment; 20,000 account-team
members of which 85% have a Slack user id (5% a row without one, 10% no row; assignment
e-mails in mixed case); 30% of events are
provisioning failures; events of ~500-800 bytes with ``data`` as a JSON string half the time;
0.1% malformed records. Prints input events per second (best of ``--repeat`` runs).
``make_workload`` is importable for the end-to-end benchmark.
"""

from __future__ import annotations

import argparse
import gc
import random
import string
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.connector_failure import (
    ASSIGNMENTS,
    CONNECTOR_FAILURE,
    SLACK_USERS,
)
from alert_platform.pipelines.engine import BatchCounts, enrich_batch
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.tables.lookup import LookupTable
from alert_platform.topics import NOTIFICATIONS

SEED = 20240501
N_ORGS = 50_000
N_PEOPLE = 20_000
ASSIGNED = 0.90
WITH_SLACK = 0.85
PROVISIONING_SHARE = 0.30
MALFORMED_SHARE = 0.001
STATUSES = ("Running", "Paused", "Failed", "Degraded", "Deleting", "Provisioning")
CONNECTORS = ("postgres-cdc", "s3-sink", "snowflake-sink", "mongo-source", "http-sink", "bq-sink")
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2")


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=n))


def make_tables(seed: int = SEED) -> tuple[list[str], dict[str, LookupTable]]:
    """The org ids and the two lookup tables of the workload."""
    rng = random.Random(seed)
    people = [
        (f"{_word(rng, 6)}.{_word(rng, 8)}@example.com", f"Person {i}") for i in range(N_PEOPLE)
    ]
    orgs = [f"org-{_word(rng, 10)}" for _ in range(N_ORGS)]
    assignments = []
    for org in orgs:
        if rng.random() < ASSIGNED:
            email, name = rng.choice(people)
            if rng.random() < 0.3:
                email = email.capitalize()
            assignments.append(
                {
                    "org_id": org,
                    "csdr_email": email,
                    "csdr_name": name,
                    "account_name": f"Account {_word(rng, 5).title()} Inc.",
                }
            )
    users = []
    for email, name in people:
        draw = rng.random()
        if draw < WITH_SLACK + 0.05:  # 5%: known person without a Slack id (fallback too)
            slack_id = f"U{_word(rng, 10).upper()}" if draw < WITH_SLACK else ""
            users.append({"email": email, "slack_user_id": slack_id, "name": name})
    tables = {
        ASSIGNMENTS: LookupTable.from_rows(ASSIGNMENTS, "org_id", assignments),
        SLACK_USERS: LookupTable.from_rows(SLACK_USERS, "email", users, normalise_key=str.lower),
    }
    return orgs, tables


def make_event(rng: random.Random, org: str, when: datetime) -> bytes:
    old = "Provisioning" if rng.random() < PROVISIONING_SHARE else rng.choice(STATUSES[:-1])
    env, connector = f"env-{_word(rng, 6)}", f"lcc-{_word(rng, 6)}"
    labels = {
        "connector_old_status": old,
        "connector_new_status": "Failed" if old == "Provisioning" else rng.choice(STATUSES),
        "org_id": org,
        "env_id": env,
        "connector_id": connector,
        "connector_name": f"{rng.choice(CONNECTORS)}-{_word(rng, 5)}",
        "cluster_id": f"lkc-{_word(rng, 6)}",
        "region": rng.choice(REGIONS),
    }
    data = {
        "labels": labels,
        "message": f"Connector status changed from {old}",
        "details": {"trace": _word(rng, rng.randint(0, 100))},
    }
    event = {
        "specversion": "1.0",
        "id": str(uuid.UUID(int=rng.getrandbits(128))),
        "source": f"crn://confluent.cloud/organization={org}/environment={env}",
        "type": "io.confluent.cloud.connector.status.changed",
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": orjson.dumps(data).decode() if rng.random() < 0.5 else data,
    }
    return orjson.dumps(event)


MALFORMED = (b"not json", b"[1,2]", b'{"data": 3}', b'{"data": "{"}', b"\xff\xfe", None)


# The workload is dated 2024-05-01, so its output stays byte-identical from day to day: runs over
# it accept event times that far back (ALERT_EVENT_TIME_MAX_PAST_HOURS at its maximum, 10 years).
WORKLOAD_MAX_PAST_HOURS = 87_600


def make_workload(n: int, seed: int = SEED) -> tuple[list[SourceRecord], dict[str, LookupTable]]:
    """``n`` records of ``data-notifications-pipeline`` and the tables to enrich them with."""
    orgs, tables = make_tables(seed)
    rng = random.Random(seed + 1)
    start = datetime(2024, 5, 1, tzinfo=UTC)
    records = []
    for offset in range(n):
        org = rng.choice(orgs)
        when = start + timedelta(milliseconds=offset * 7)
        value = (
            rng.choice(MALFORMED) if rng.random() < MALFORMED_SHARE else make_event(rng, org, when)
        )
        ts = int(when.timestamp() * 1000) + 5
        records.append(SourceRecord(NOTIFICATIONS, offset % 4, offset, ts, org.encode(), value))
    return records, tables


def run(
    records: list[SourceRecord], tables: dict[str, LookupTable], batch: int, options: RenderOptions
) -> tuple[float, float, BatchCounts]:
    """(wall seconds, CPU seconds of this process, counts) for one pass over ``records``."""
    counts = BatchCounts()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(records), batch):
        result = enrich_batch(CONNECTOR_FAILURE, records[i : i + batch], tables, options)
        counts = counts + result.counts
    return time.perf_counter() - wall, time.process_time() - cpu, counts


def calibrate() -> float:
    """Nanoseconds per iteration of an empty ``for`` loop: how fast this interpreter runs."""
    started = time.process_time()
    for _ in range(5_000_000):
        pass
    return (time.process_time() - started) / 5_000_000 * 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-console-url", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    records, tables = make_workload(args.events)
    gc.collect()
    gc.freeze()  # the workload and tables are long-lived: keep them out of GC passes
    sizes = [len(r.value) for r in records if r.value]
    print(
        f"workload: {len(records):,} events, {sum(sizes) / len(sizes):.0f} bytes avg "
        f"(min {min(sizes)}, max {max(sizes)}), built in {time.perf_counter() - t0:.1f}s"
    )
    options = RenderOptions(
        console_url_template=""
        if args.no_console_url
        else "https://console.example/{org_id}/{env_id}/connectors/{connector_id}"
    )
    best_wall = best_cpu = 0.0
    counts = BatchCounts()
    for attempt in range(args.repeat):
        wall, cpu, counts = run(records, tables, args.batch, options)
        n = len(records)
        print(
            f"run {attempt + 1}: {wall:.2f}s wall {n / wall:,.0f} events/s | "
            f"{cpu:.2f}s CPU {n / cpu:,.0f} events/s"
        )
        best_wall, best_cpu = max(best_wall, n / wall), max(best_cpu, n / cpu)
    print(f"counts: {counts.as_dict()}")
    print(f"machine: empty Python loop {calibrate():.1f} ns/iteration (for comparing machines)")
    print(
        f"engine: {best_wall:,.0f} input events/s wall, {best_cpu:,.0f} per CPU-second "
        f"(best of {args.repeat}, batch {args.batch:,}; CPU figure ignores other load)"
    )


if __name__ == "__main__":
    main()
