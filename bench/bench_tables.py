"""Lookup-table snapshot benchmark: save and load 100k / 1M-row snapshots.

    .venv/bin/python bench/bench_tables.py [--sizes 100000,1000000] [--tables NAME,...]
        [--kafka-records 500000 | --no-kafka]

For each table and size, one subprocess builds the table (fixed seed) and saves its snapshot
(save seconds, file MB); a *fresh* subprocess then loads it, so the peak RSS it reports
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, whole process: interpreter, pyarrow and the
table) is the cost of loading alone. Requirement: 1,000,000 rows load in < 3 s and < 600 MB.

Then (unless ``--no-kafka``) against a throw-away local broker on a free port: the cost of one
sensor tick's probe (fresh consumer, ``probe_end_offsets`` over 4 partitions, close; median of
20), ``read_range`` throughput (consume + conversion to ``SourceRecord``, best of 3) over
``--kafka-records`` assignment records, and ``catch_up`` throughput (read + JSON parse + upsert).

Workload: ``csdr_assignments`` has one row per org (``org-0000001``) assigned to one of 2,000
account-team members (repeated e-mail and name) with a unique account name;
``slack_users`` has one row per person with a unique e-mail, a ``U...`` id and a name; 2% of the
e-mails are mixed case (Slack profiles mostly hold lower-case addresses), so 98% of the keys
share their string with the e-mail column. ``slack_users:mixed`` is the worst case: every
e-mail mixed case, so every normalised key is a second string (not part of the requirement
check; reported for information).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alert_platform.tables.specs import TABLE_SPECS

SEED = 20240501
N_MEMBERS = 2_000
LIMIT_S = 3.0
LIMIT_MB = 600.0


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=n))


def _spec(table_name: str):  # -> TableSpec
    return TABLE_SPECS[table_name.split(":")[0]]


def build(table_name: str, rows: int):  # -> LookupTable
    spec = _spec(table_name)
    mixed_share = 1.0 if table_name.endswith(":mixed") else 0.02
    rng = random.Random(SEED)
    table = spec.new_table()
    if table_name == "csdr_assignments":
        members = [
            (f"{_word(rng, 6)}.{_word(rng, 8)}@example.com", f"Member {i} {_word(rng, 7).title()}")
            for i in range(N_MEMBERS)
        ]
        for i in range(rows):
            email, name = members[rng.randrange(N_MEMBERS)]
            org_id = f"org-{i:07d}"
            table.upsert(
                org_id,
                {
                    "org_id": org_id,
                    "csdr_email": email,
                    "csdr_name": name,
                    "account_name": f"{_word(rng, 8).title()} Holdings {i}",
                },
            )
    else:
        for i in range(rows):
            email = f"{_word(rng, 6)}.{_word(rng, 8)}{i}@example.com"
            if rng.random() < mixed_share:
                email = email.title()
            table.upsert(
                email,
                {
                    "email": email,
                    "slack_user_id": f"U{i:010d}",
                    "name": f"{_word(rng, 6).title()} {_word(rng, 9).title()}",
                },
            )
    return table


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_save(table_name: str, rows: int, path: str) -> dict[str, float]:
    from alert_platform.tables.snapshot import save_snapshot

    table = build(table_name, rows)
    started = time.perf_counter()
    spec = _spec(table_name)
    save_snapshot(table, {0: rows, 1: 7}, path, topic=spec.topic, normalise_key=spec.normalise_key)
    seconds = time.perf_counter() - started
    return {"save_s": seconds, "file_mb": Path(path).stat().st_size / 1e6}


def child_load(table_name: str, rows: int, path: str) -> dict[str, float]:
    import gc

    import pyarrow.parquet  # noqa: F401  (import cost is not load cost)

    from alert_platform.tables.snapshot import load_snapshot

    base_mb = _peak_rss_mb()
    started = time.perf_counter()
    table, offsets = load_snapshot(path, _spec(table_name))
    seconds = time.perf_counter() - started
    assert len(table) == rows, (len(table), rows)
    assert offsets == {0: rows, 1: 7}, offsets
    gc.collect()
    return {"load_s": seconds, "peak_rss_mb": _peak_rss_mb(), "base_rss_mb": base_mb}


def _run_child(mode: str, table: str, rows: int, path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, table, str(rows), str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def kafka_bench(records: int) -> None:
    """Probe cost, read throughput and catch-up throughput against a fresh local broker."""
    import statistics

    import orjson

    from alert_platform.kafka.admin import create_topics
    from alert_platform.kafka.clients import make_consumer, make_producer
    from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
    from alert_platform.kafka.reader import read_ranges
    from alert_platform.kafka.writer import BatchProducer
    from alert_platform.local.stack import LocalStack, free_port_settings
    from alert_platform.tables.specs import CSDR_ASSIGNMENTS
    from alert_platform.tables.topic_loader import catch_up
    from alert_platform.topics import TopicSpec

    with tempfile.TemporaryDirectory(prefix="bench-tables-kafka-") as tmp:
        settings = free_port_settings(Path(tmp))
        stack = LocalStack(settings, die_with_parent=True)
        stack.up(["kafka"])
        try:
            topic = "bench-csdr-assignment"
            create_topics(settings, [TopicSpec(topic, 4, {"cleanup.policy": "compact"})])
            producer = BatchProducer(make_producer(settings))
            rng = random.Random(SEED)
            started = time.perf_counter()
            for i in range(records):
                org = f"org-{i % (records // 2 or 1):07d}"  # two versions per key
                value = {
                    "org_id": org,
                    "csdr_email": f"member{rng.randrange(N_MEMBERS)}@example.com",
                    "csdr_name": "Member Name",
                    "account_name": f"Account {i}",
                }
                producer.produce(topic, org.encode(), orjson.dumps(value))
            producer.flush(120)
            del producer  # before the broker goes away
            produce_s = time.perf_counter() - started
            print(f"\nkafka: produced {records:,} records in {produce_s:.2f} s")

            costs = []
            for _ in range(20):
                consumer = make_consumer(settings)
                t0 = time.perf_counter()
                ends = probe_end_offsets(consumer, topic)
                costs.append(time.perf_counter() - t0)
                consumer.close()
            assert sum(ends.values()) == records, ends
            consumer = make_consumer(settings)
            warm = []
            for _ in range(20):
                t0 = time.perf_counter()
                probe_end_offsets(consumer, topic)
                warm.append(time.perf_counter() - t0)
            consumer.close()
            for label, samples in (("fresh consumer", costs), ("reused consumer", warm)):
                print(
                    f"probe_end_offsets, 4 partitions, {label}: median "
                    f"{statistics.median(samples) * 1000:.1f} ms, "
                    f"max {max(samples) * 1000:.1f} ms"
                )

            ranges = [OffsetRange(topic, p, 0, end) for p, end in sorted(ends.items())]
            consumer = make_consumer(settings)
            best = 0.0
            for _ in range(3):
                t0 = time.perf_counter()
                n = sum(len(batch) for batch in read_ranges(consumer, ranges))
                best = max(best, n / (time.perf_counter() - t0))
                assert n == records, n
            print(f"read_range (consume + SourceRecord): {best:,.0f} records/s (best of 3)")

            table = CSDR_ASSIGNMENTS.new_table()
            t0 = time.perf_counter()
            _offsets, stats = catch_up(
                table, topic, {}, consumer, CSDR_ASSIGNMENTS.parse_value, key_field="org_id"
            )
            seconds = time.perf_counter() - t0
            consumer.close()
            print(
                f"catch_up (read + parse + upsert): {stats.records:,} records -> "
                f"{len(table):,} rows in {seconds:.2f} s ({stats.records / seconds:,.0f} rec/s)"
            )
        finally:
            stack.down(["kafka"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--tables", default="csdr_assignments,slack_users,slack_users:mixed")
    parser.add_argument("--kafka-records", type=int, default=500_000)
    parser.add_argument("--no-kafka", action="store_true", help="skip the broker part")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "TABLE", "ROWS", "PATH"))
    args = parser.parse_args(argv)
    if args.child:
        mode, table, rows, path = args.child
        fn = child_save if mode == "save" else child_load
        print(json.dumps(fn(table, int(rows), path)))
        return 0

    ok = True
    print(
        f"{'table':<18} {'rows':>9} {'save s':>7} {'file MB':>8} {'load s':>7} "
        f"{'peak RSS MB':>12} {'(start MB)':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        for table in args.tables.split(","):
            for rows in (int(s) for s in args.sizes.split(",")):
                path = Path(tmp) / f"{table.replace(':', '-')}-{rows}.parquet"
                saved = _run_child("save", table, rows, path)
                loaded = _run_child("load", table, rows, path)
                print(
                    f"{table:<18} {rows:>9,} {saved['save_s']:>7.2f} {saved['file_mb']:>8.1f} "
                    f"{loaded['load_s']:>7.2f} {loaded['peak_rss_mb']:>12.0f} "
                    f"{loaded['base_rss_mb']:>10.0f}"
                )
                if (
                    rows >= 1_000_000
                    and ":" not in table
                    and (loaded["load_s"] >= LIMIT_S or loaded["peak_rss_mb"] >= LIMIT_MB)
                ):
                    ok = False
                path.unlink()
    print(
        f"requirement (1M rows: load < {LIMIT_S:g} s, peak RSS < {LIMIT_MB:g} MB): "
        f"{'met' if ok else 'NOT met'}"
    )
    if not args.no_kafka:
        kafka_bench(args.kafka_records)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
