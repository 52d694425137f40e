"""Backfill benchmark: one past hour of 100,000 source events, re-derived and delivered.

    .venv/bin/python bench/bench_backfill.py [--events 100000] [--outside 10000]
        [--predelivered 0.2] [--sandbox-rate 1000] [--sandbox-burst 50] [--workers N]
        [--in-process] [--profile FILE] [--keep DIR] [--json]

Requirement (issue #5): ``alert-platform backfill --local --deliver`` over an hour holding
100,000 source events finishes in under 60 s on this machine, with the Slack sandbox's
per-channel rate limit raised and the deliverer's pacing raised to match
(``SLACK_CHANNEL_RATE_PER_S`` = 0.95 x the sandbox rate, ``SLACK_CHANNEL_BURST`` = its burst - 1).

Setup (untimed), on its own local stack (Tansu broker + Slack sandbox on free ports, data dir
in a tmp dir, stopped at the end):

* the catalogue's topics; the lookup tables of ``bench_engine.make_tables`` (fixed seed: 50,000
  orgs of which 90% assigned, 20,000 account-team members of which 85% have a Slack id)
  produced to their topics, with snapshots saved (as the table assets keep them); every member
  with a Slack id registered in the sandbox (so ``conversations.open`` / ``chat.postMessage``
  to their DM succeed); the sandbox's per-channel limit raised;
* ``--events`` notification events (``bench_engine.make_event``: 30% provisioning failures,
  0.1% malformed) keyed by org, with Kafka timestamps (and event times) spread evenly over the
  hour ``[now-2h, now-1h)`` (whole hours), plus ``--outside`` events split over the hours just
  before and after it;
* "live" history: one enrichment run over everything (``run_enrichment`` with the run index, in
  ranges of about 2,500 records, as the tail sensor's runs record them), then delivery (the
  real deliverer and ledger) of the alerts of the neighbouring hours and of a fixed-seed
  ``--predelivered`` share of the window's alerts: what got through before Slack failed. They
  are in Slack and the ledger before the backfill starts; the rest is the gap to fill.

Timed: ``alert-platform backfill --local --start S --end E --deliver --json`` as a subprocess
(interpreter start-up included), from spawn to exit; ``--in-process`` calls the CLI's ``main``
in this process instead (``--profile FILE`` then writes a cProfile of it; the delivery lanes
run in threads, so use ``py-spy record --subprocesses`` for those). The command's JSON gives the
split: locate window, tables, enrichment, delivery (read + post), posted, skipped as already
delivered. Also printed: when the posts to the fallback channel (one serial lane) and to the
DMs started and ended, and the CPU seconds of the command, the broker, the sandbox and the rest
of the machine during the run (other work on this shared 2-core machine skews the figures).

Checks (exit 1 when any fails, or when the wall time misses 60 s): the sandbox holds every
expected alert (window and neighbouring hours, computed by the pure engine) exactly once, in
the conversation it is addressed to, and nothing else; the backfill re-derived exactly the
window's alerts, posted exactly the ones not delivered before and skipped the others as
``already_delivered``; nothing dead-lettered, no 429 from the sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import http.client
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import MALFORMED, MALFORMED_SHARE, SEED, make_event, make_tables
from host_cpu import busy_cpu_s, process_cpu_s
from suite.common import produce_all

from alert_platform import topics
from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.runner import read_messages
from alert_platform.kafka.admin import create_topics
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.kafka.records import SourceRecord
from alert_platform.kafka.writer import BatchProducer
from alert_platform.local.profile import local_settings
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.local.stack import LocalStack, free_port_settings
from alert_platform.pipelines.connector_failure import (
    ASSIGNMENTS,
    CONNECTOR_FAILURE,
    SLACK_USERS,
)
from alert_platform.pipelines.engine import enrich_batch
from alert_platform.pipelines.runner import load_join_tables, run_enrichment
from alert_platform.pipelines.spec import RenderOptions
from alert_platform.run_index import RunIndex
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from alert_platform.tables.lookup import LookupTable
from alert_platform.tables.specs import TABLE_SPECS
from alert_platform.tables.topic_loader import refresh_snapshot

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 60.0
CONSOLE_URL = "https://console.example/{org_id}/{env_id}/connectors/{connector_id}"
LIVE_RANGE = 2_500  # records per recorded range of the "live" history
METADATA_EVENT_TYPE = "alert_platform_alert"
FALLBACK_ID = "C0UNROUTED"  # the sandbox's #alerts-unrouted
_ENV_PREFIXES = ("ALERT_PLATFORM_", "ALERT_", "KAFKA_", "SLACK_", "BIGQUERY_", "DAGSTER_")


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- workload ------------------------------------------------------------------------------------


def past_hour() -> tuple[datetime, datetime]:
    """The window: the whole hour that ended an hour ago, ``[now-2h, now-1h)`` in hours."""
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return top - timedelta(hours=2), top - timedelta(hours=1)


def make_events(
    orgs: list[str], start: datetime, end: datetime, n: int, seed: int
) -> list[SourceRecord]:
    """``n`` notification events evenly spread over ``[start, end)`` (Kafka timestamp = event
    time + 5 ms), keyed by org; 0.1% malformed."""
    rng = random.Random(seed)
    span_ms = (end - start).total_seconds() * 1000
    records = []
    for i in range(n):
        org = rng.choice(orgs)
        when = start + timedelta(milliseconds=int(i * span_ms / max(n, 1)))
        value = (
            rng.choice(MALFORMED) if rng.random() < MALFORMED_SHARE else make_event(rng, org, when)
        )
        ts = int(when.timestamp() * 1000) + 5
        records.append(SourceRecord(topics.NOTIFICATIONS, 0, i, ts, org.encode(), value))
    return records


def expected_alerts(
    records: list[SourceRecord], tables: dict[str, LookupTable]
) -> tuple[dict[str, dict[str, Any]], int]:
    """alert id -> its first message (the pure engine's output, in record order), and the
    number of records the engine dead-letters."""
    options = RenderOptions(console_url_template=CONSOLE_URL)
    out: dict[str, dict[str, Any]] = {}
    dead = 0
    for start in range(0, len(records), 10_000):
        result = enrich_batch(CONNECTOR_FAILURE, records[start : start + 10_000], tables, options)
        dead += result.counts.dead_lettered
        for alert in result.alerts:
            value = orjson.loads(alert.value)
            out.setdefault(value["alert_id"], value)
    return out, dead


def conversation_of(channel_ref: str) -> str:
    """Where the sandbox files a message addressed to ``channel_ref``."""
    if channel_ref.startswith(("U", "W")):
        return "D" + channel_ref[1:]
    if channel_ref.lstrip("#") == "alerts-unrouted":
        return FALLBACK_ID
    return channel_ref


# -- setup ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_stack(root: Path) -> Iterator[tuple[Settings, dict[str, int]]]:
    """A Tansu broker and a Slack sandbox on free ports, state under ``root``:
    (settings, service name -> pid)."""
    base = local_settings(connector_console_url_template=CONSOLE_URL)
    settings = free_port_settings(root / "data", base)
    stack = LocalStack(settings, die_with_parent=True)
    stack.up(["kafka", "slack"])
    try:
        pids = {name: status.pid or 0 for name, status in stack.status(["kafka", "slack"]).items()}
        yield settings, pids
    finally:
        gc.collect()  # drop unreferenced Kafka clients before their broker goes away
        stack.down(["kafka", "slack"])


def register_users(api_url: str, users: list[tuple[str, str, str]], threads: int = 4) -> None:
    """Add (id, email, name) users to the sandbox over keep-alive connections."""
    parts = urlsplit(api_url)
    local = threading.local()

    def add(user: tuple[str, str, str]) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        body = orjson.dumps({"id": user[0], "email": user[1], "name": user[2]})
        conn.request("POST", "/_sandbox/users", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"sandbox refused user {user[0]}: {answer[:200]!r}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(add, users, chunksize=256))


def produce(settings: Settings, items: list[tuple[str, bytes | None, bytes | None, int]]) -> None:
    """(topic, key, value, timestamp ms or 0) -> the broker; flush."""
    producer = BatchProducer.from_settings(settings, **{"queue.buffering.max.messages": 500_000})
    produce_all(producer, [(topic, key, value, None, ts) for topic, key, value, ts in items])


def live_history(settings: Settings) -> list[OffsetRange]:
    """One enrichment run over the whole source topic in ~LIVE_RANGE-record ranges, recorded
    in the run index (what the tail sensor's runs leave behind). Returns the written ranges."""
    consumer = make_consumer(settings)
    try:
        ends = probe_end_offsets(consumer, topics.NOTIFICATIONS)
    finally:
        consumer.close()
    ranges = [
        OffsetRange(topics.NOTIFICATIONS, p, start, min(start + LIVE_RANGE, end))
        for p, end in sorted(ends.items())
        for start in range(0, end, LIVE_RANGE)
    ]
    tables = load_join_tables(settings, CONNECTOR_FAILURE)
    index = RunIndex(settings.effective_ledger_url)
    try:
        report = run_enrichment(
            settings, CONNECTOR_FAILURE, ranges, run_id="bench-live", tables=tables, index=index
        )
    finally:
        index.close()
    return [r for r in report.written if r.topic == topics.SLACK_MESSAGES]


def deliver_live(
    settings: Settings, written: list[OffsetRange], keep: set[str], pacer: ChannelPacer
) -> int:
    """Deliver the live run's alerts whose id is in ``keep`` (what got through before the
    outage), with the real deliverer and the platform's ledger."""
    records = [
        record
        for record in read_messages(settings, written)
        if orjson.loads(record.value)["alert_id"] in keep
    ]
    ledger = DeliveryLedger(settings.effective_ledger_url, owner="bench-live")
    try:
        report = deliver_batch(records, make_web_client(settings), ledger, window=24, pacer=pacer)
    finally:
        ledger.close()
    if report.posted != len(keep) or report.dead_lettered:
        raise RuntimeError(f"live delivery: {report.summary()}")
    return report.posted


# -- the timed command ---------------------------------------------------------------------------


def cli_env(settings: Settings, rate: float, burst: int, workers: int | None) -> dict[str, str]:
    """The environment of a user's shell pointed at the bench stack (nothing else inherited
    that changes behaviour)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES)}
    env.pop("CONNECTOR_CONSOLE_URL_TEMPLATE", None)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ALERT_PLATFORM_KAFKA_PROFILE": "local",
            "ALERT_PLATFORM_DATA_DIR": str(Path(settings.data_dir).resolve()),
            "SLACK_API_URL": settings.slack_api_url,
            "SLACK_BOT_TOKEN": settings.slack_bot_token.get_secret_value(),
            "CONNECTOR_CONSOLE_URL_TEMPLATE": CONSOLE_URL,
            "SLACK_CHANNEL_RATE_PER_S": f"{rate:g}",
            "SLACK_CHANNEL_BURST": str(burst),
        }
    )
    if workers is not None:
        env["ALERT_PLATFORM_DELIVERY_WORKERS"] = str(workers)
    return env


def backfill_command(start: datetime, end: datetime) -> list[str]:
    return [
        "backfill", "--local", "--start", start.isoformat(), "--end", end.isoformat(),
        "--deliver", "--json",
    ]  # fmt: skip


def run_backfill_subprocess(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    script = Path(sys.executable).with_name("alert-platform")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "alert_platform.cli"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"backfill exited {done.returncode}: {done.stderr[-3000:]}")
    return wall, json.loads(done.stdout)


def run_backfill_in_process(
    args: list[str], env: dict[str, str], profile: str | None
) -> tuple[float, dict[str, Any]]:
    from alert_platform.cli import main as cli_main

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    buffer = io.StringIO()
    profiler = cProfile.Profile() if profile else None
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(buffer):
            if profiler:
                profiler.enable()
            code = cli_main(args)
            if profiler:
                profiler.disable()
        wall = time.perf_counter() - started
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if profiler:
        profiler.dump_stats(profile)
    if code != 0:
        raise RuntimeError(f"backfill returned {code}: {buffer.getvalue()[-2000:]}")
    return wall, json.loads(buffer.getvalue())


# -- the measurement -----------------------------------------------------------------------------


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    start, end = past_hour()
    rate = round(args.sandbox_rate * 0.95, 3)
    burst = max(1, args.sandbox_burst - 1)
    result: dict[str, Any] = {
        "events": args.events,
        "outside_events": args.outside,
        "window": f"{start.isoformat()} .. {end.isoformat()}",
        "sandbox_limit": f"{args.sandbox_rate:g} msg/s/channel, burst {args.sandbox_burst}",
        "pacing": f"{rate:g} msg/s/channel, burst {burst}",
        "delivery_workers": args.workers or Settings().delivery_max_workers,
        "problems": [],
    }
    problems: list[str] = result["problems"]
    setup_started = time.perf_counter()
    orgs, tables = make_tables(SEED)
    window_events = make_events(orgs, start, end, args.events, SEED + 1)
    before = make_events(orgs, start - timedelta(hours=1), start, args.outside // 2, SEED + 2)
    after = make_events(orgs, end, end + timedelta(hours=1), args.outside - len(before), SEED + 3)
    in_window, window_dead = expected_alerts(window_events, tables)
    outside, _ = expected_alerts(before + after, tables)
    if set(in_window) & set(outside):
        problems.append("workload: an alert id occurs both inside and outside the window")
    rng = random.Random(SEED + 4)
    window_ids = sorted(in_window)
    predelivered = set(rng.sample(window_ids, int(len(window_ids) * args.predelivered)))
    result["expected_alerts"] = len(in_window)
    result["expected_fallback"] = sum(
        1 for v in in_window.values() if conversation_of(v["channel_id"]) == FALLBACK_ID
    )
    result["predelivered"] = len(predelivered)

    with bench_stack(root) as (settings, pids):
        sandbox = SandboxControl(settings.slack_api_url)
        sandbox.set_rate_limit(args.sandbox_rate, burst=args.sandbox_burst)
        users = [
            (row["slack_user_id"], row["email"], row["name"])
            for _key, row in tables[SLACK_USERS].items()
            if row.get("slack_user_id")
        ]
        register_users(settings.slack_api_url, users)
        create_topics(settings)
        rows = []
        for name in (ASSIGNMENTS, SLACK_USERS):
            spec = TABLE_SPECS[name]
            for _key, row in tables[name].items():
                rows.append((spec.topic, row[spec.key_field].encode(), orjson.dumps(row), 0))
        produce(settings, rows)
        for name in (ASSIGNMENTS, SLACK_USERS):
            loaded = refresh_snapshot(settings, TABLE_SPECS[name])
            if len(loaded.table) != len(tables[name]):
                raise RuntimeError(f"{name}: snapshot holds {len(loaded.table)} rows")
        events = [*before, *window_events, *after]
        produce(settings, [(r.topic, r.key, r.value, r.timestamp_ms) for r in events])
        written = live_history(settings)
        live_pacer = ChannelPacer(rate, burst)
        live = deliver_live(settings, written, set(outside) | predelivered, live_pacer)
        result["live_delivered"] = live
        result["setup_s"] = round(time.perf_counter() - setup_started, 1)
        log(
            f"  setup {result['setup_s']}s: {len(users):,} Slack users, {len(events):,} events, "
            f"{len(in_window):,} window alerts ({len(predelivered):,} delivered live), "
            f"{len(outside):,} outside alerts delivered live"
        )
        before_stats = sandbox.stats()

        env = cli_env(settings, rate, burst, args.workers)
        command = backfill_command(start, end)
        gc.collect()
        began_epoch = time.time()
        busy0, cpu0 = busy_cpu_s(), _own_cpu_s()
        services0 = {name: process_cpu_s(pid) for name, pid in pids.items()}
        if args.in_process:
            wall, out = run_backfill_in_process(command, env, args.profile)
        else:
            wall, out = run_backfill_subprocess(command, env)
        cpu = {
            "backfill_command": round(_own_cpu_s() - cpu0, 1),
            **{name: round(process_cpu_s(pid) - services0[name], 1) for name, pid in pids.items()},
        }
        busy = busy_cpu_s() - busy0
        cpu["other_processes"] = round(max(0.0, busy - sum(cpu.values())), 1)
        result["cpu_s"] = cpu
        log(f"  backfill done in {wall:.1f}s")

        stats = sandbox.stats()
        held = Counter()
        where: dict[str, set[str]] = {}
        lane_ends: dict[str, list[float]] = {"fallback": [], "other": []}
        for message in sandbox.messages():
            posted_at = float(message["ts"]) - began_epoch
            if posted_at > 0:
                lane = "fallback" if message["channel"] == FALLBACK_ID else "other"
                lane_ends[lane].append(posted_at)
            metadata = message.get("metadata") or {}
            if metadata.get("event_type") != METADATA_EVENT_TYPE:
                continue
            alert_id = (metadata.get("event_payload") or {}).get("alert_id")
            held[alert_id] += 1
            where.setdefault(alert_id, set()).add(message["channel"])
        with DeliveryLedger(settings.effective_ledger_url) as ledger:
            ledger_states = ledger.count_by_state()

    pipelines = {p["pipeline"]: p for p in out["pipelines"]}
    cf = pipelines["connector_failure"]
    delivery = out.get("delivery") or {}
    posted, skipped = delivery.get("delivered", 0), delivery.get("already_delivered", 0)
    locate_s = sum(p.get("locate_s", 0.0) for p in out["pipelines"])
    enrich_s = sum(p.get("elapsed_s", 0.0) for p in out["pipelines"])
    deliver_s = delivery.get("elapsed_s", 0.0)
    result.update(
        {
            "wall_s": round(wall, 2),
            "target_s": TARGET_S,
            "mode": "in-process" if args.in_process else "subprocess",
            "split_s": {
                "locate_window": round(locate_s, 2),
                "tables": round(sum(p.get("tables_s", 0.0) for p in out["pipelines"]), 2),
                "enrichment": round(enrich_s, 2),
                "delivery": round(deliver_s, 2),
                "other": round(wall - locate_s - enrich_s - deliver_s, 2),
            },
            "located_by": cf["located_by"],
            "source_ranges": len(cf["source_ranges"]),
            "read": cf["read"],
            "outside_window": cf["outside_window"],
            "alerts": cf["alerts"],
            "routed_to_fallback": cf.get("routed_to_fallback"),
            "posted": posted,
            "skipped_already_delivered": skipped,
            "suppressed_repeat": delivery.get("suppressed_repeat", 0),
            "dead_lettered": delivery.get("dead_lettered", 0),
            "malformed_to_alerts_dlq": cf.get("dead_lettered", 0),
            "posted_per_s_wall": round(posted / wall, 1) if wall else 0.0,
            "posted_per_s_delivery": round(posted / deliver_s, 1) if deliver_s else 0.0,
            "events_per_s_wall": round(args.events / wall, 1) if wall else 0.0,
            "sandbox_calls": {
                k: v - before_stats["calls_by_method"].get(k, 0)
                for k, v in stats["calls_by_method"].items()
            },
            "http_429": stats.get("http_429", 0) - before_stats.get("http_429", 0),
            "posts_s_after_start": {
                lane: {"first": round(min(v), 2), "last": round(max(v), 2), "posts": len(v)}
                for lane, v in lane_ends.items()
                if v
            },
            "ledger_states": ledger_states,
        }
    )

    # -- correctness ------------------------------------------------------------------------
    every = {**outside, **in_window}
    lost = [a for a in every if held.get(a, 0) == 0]
    duplicated = [a for a, n in held.items() if n > 1]
    unexpected = [a for a in held if a not in every]
    misrouted = [
        a for a, value in every.items()
        if a in where and where[a] != {conversation_of(value["channel_id"])}
    ]  # fmt: skip
    result["check"] = {
        "expected_in_slack": len(every),
        "held_once": sum(1 for a in every if held.get(a) == 1),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "unexpected": len(unexpected),
        "misrouted": len(misrouted),
    }
    if lost or duplicated or unexpected or misrouted:
        problems.append(
            f"sandbox: {len(lost)} lost, {len(duplicated)} duplicated, {len(unexpected)} "
            f"unexpected, {len(misrouted)} misrouted (e.g. {(lost + duplicated + unexpected)[:3]})"
        )
    if cf["alerts"] != len(in_window):
        problems.append(f"backfill re-derived {cf['alerts']} alerts, expected {len(in_window)}")
    if posted != len(in_window) - len(predelivered):
        problems.append(f"posted {posted}, expected {len(in_window) - len(predelivered)}")
    if skipped != len(predelivered):
        problems.append(f"skipped {skipped} as already delivered, expected {len(predelivered)}")
    if result["dead_lettered"]:
        problems.append(f"delivery dead-lettered {result['dead_lettered']}")
    if cf.get("dead_lettered", 0) != window_dead:
        problems.append(f"enrichment dead-lettered {cf.get('dead_lettered')}, want {window_dead}")
    if result["http_429"]:
        problems.append(f"{result['http_429']} HTTP 429 from the sandbox (pacing above limit)")
    if ledger_states.get("delivered") != len(every) or set(ledger_states) != {"delivered"}:
        problems.append(f"ledger states {ledger_states}, expected {len(every)} delivered")
    result["pass_correctness"] = not problems
    result["pass_target"] = wall < TARGET_S
    result["pass"] = result["pass_correctness"] and result["pass_target"]
    return result


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the subprocess command)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def print_result(result: dict[str, Any]) -> None:
    split = result.get("split_s", {})
    check = result.get("check", {})
    print(f"Backfill of one hour: {result['events']:,} source events in the window "
          f"(+{result['outside_events']:,} in the neighbouring hours)")  # fmt: skip
    print(f"  window             {result['window']}")
    print(f"  sandbox limit      {result['sandbox_limit']}; pacing {result['pacing']}; "
          f"{result['delivery_workers']} delivery threads")  # fmt: skip
    if "wall_s" not in result:
        print(f"  problems           {result['problems']}")
        return
    print(f"  wall time          {result['wall_s']:.2f} s ({result['mode']}, from start to exit;"
          f" target < {result['target_s']:.0f} s)")  # fmt: skip
    print("  split              " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
    print(f"  located by         {result['located_by']}, {result['source_ranges']} range(s); "
          f"read {result['read']:,}, outside_window {result['outside_window']:,}")  # fmt: skip
    print(f"  alerts             {result['alerts']:,} re-derived ({result['routed_to_fallback']:,}"
          f" to the fallback channel); {result['malformed_to_alerts_dlq']} malformed events "
          "to alerts-dlq")  # fmt: skip
    print(f"  posted             {result['posted']:,}; skipped as already delivered "
          f"{result['skipped_already_delivered']:,} (delivered before the backfill: "
          f"{result['predelivered']:,})")  # fmt: skip
    print(f"  msgs/s             {result['posted_per_s_wall']:,.1f} posted per wall second, "
          f"{result['posted_per_s_delivery']:,.1f} per delivery second; "
          f"{result['events_per_s_wall']:,.0f} source events per wall second")  # fmt: skip
    print(f"  sandbox calls      {result['sandbox_calls']}; HTTP 429: {result['http_429']}")
    for lane, span in result["posts_s_after_start"].items():
        label = "fallback channel" if lane == "fallback" else "DMs"
        print(f"  posts to {label:<9} {span['posts']:,} from {span['first']:.1f} s to "
              f"{span['last']:.1f} s after the command started")  # fmt: skip
    print("  CPU seconds        " + ", ".join(f"{k} {v}" for k, v in result["cpu_s"].items())
          + f" (2 cores x {result['wall_s']:.0f} s = {2 * result['wall_s']:.0f})")  # fmt: skip
    print(f"  correctness        {check.get('held_once', 0):,} of "
          f"{check.get('expected_in_slack', 0):,} alerts in Slack exactly once; lost "
          f"{check.get('lost')}, duplicated {check.get('duplicated')}, unexpected "
          f"{check.get('unexpected')}, misrouted {check.get('misrouted')}; ledger "
          f"{result['ledger_states']}")  # fmt: skip
    if result["problems"]:
        print(f"  problems           {'; '.join(result['problems'])}")
    verdict = "PASS" if result["pass_target"] else "FAIL"
    print(f"  target             {verdict}: {result['wall_s']:.1f} s "
          f"{'<' if result['pass_target'] else '>='} {result['target_s']:.0f} s"
          f"{'' if result['pass_correctness'] else ' (correctness FAILED)'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="source events in the hour")
    parser.add_argument(
        "--outside", type=int, default=10_000, help="events in the hours before and after"
    )
    parser.add_argument(
        "--predelivered", type=float, default=0.2, help="share of the window's alerts delivered "
        "before the backfill (live, before an outage)"
    )  # fmt: skip
    parser.add_argument("--sandbox-rate", type=float, default=1000.0, help="msgs/s per channel")
    parser.add_argument("--sandbox-burst", type=int, default=50, help="burst per channel")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="ALERT_PLATFORM_DELIVERY_WORKERS for the command (default: the platform's)",
    )  # fmt: skip
    parser.add_argument(
        "--in-process", action="store_true", help="call the CLI in this process (no spawn)"
    )
    parser.add_argument("--profile", default=None, help="cProfile output (with --in-process)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the stack's data here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)
    if args.profile and not args.in_process:
        parser.error("--profile needs --in-process")

    root = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    try:
        result = measure(args, root)
    finally:
        if args.keep is not None:
            shutil.copytree(root, args.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
