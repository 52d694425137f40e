"""Stream mode: two delivery workers and catch-up delivery runs race over the same alerts.

The hand-over between the stream and the catch-up path: an enrichment worker and two delivery
workers in one group run in threads; 300 provisioning failures over 20 assignees go in at once.
Delivery is paced at 4 messages/s per DM (each lane takes ~4 s), so while the workers post,
catch-up runs start over exactly the same ``slack-messages`` ranges: one
:func:`~alert_platform.delivery.runner.run_delivery` per partition, in parallel, each launched
again until it finished its range (as the delivery sensor would, for ranges it sees
uncovered). The ledger must let each alert be posted exactly once, whoever claims it first, and
every alert must have its ``ok`` outcome on ``slack-responses`` (once: repeats of an outcome
carry the same ``response_id``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest

from alert_platform import topics
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.runner import finished, run_delivery
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import OffsetRange, probe_end_offsets
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from alert_platform.stream.names import DELIVERY_STREAM, stream_group
from tests.faults.harness import burst, fault_orgs, read_topic, wait_for
from tests.faults.results import record, tally
from tests.faults.stream_procs import arrivals, committed, produce_to, seed_orgs, warm_up
from tests.integration.stream_helpers import start_worker

pytestmark = [pytest.mark.integration]

ORGS = fault_orgs("shand", 20)
EVENTS = 300
SOURCE = topics.NOTIFICATIONS
PARTITIONS = 4
CATCH_UP_DEADLINE_S = 60.0


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings)
    try:
        return probe_end_offsets(consumer, topic)
    finally:
        consumer.close()


def _catch_up(settings: Settings, rng: OffsetRange, out: dict[str, object]) -> None:
    """Deliver ``rng`` again and again until a run finished it (the sensor's re-launches)."""
    client = make_web_client(settings)
    deadline = time.monotonic() + CATCH_UP_DEADLINE_S
    runs = delivered = 0
    try:
        while True:
            runs += 1
            report = run_delivery(settings, client, [rng], owner=f"catch-up:{rng.partition}")
            delivered += report.delivery.delivered if report.delivery else 0
            if finished(report):
                break
            assert time.monotonic() < deadline, f"{rng} not finished in {CATCH_UP_DEADLINE_S} s"
    except BaseException as exc:
        out["error"] = exc
    out.update(runs=runs, delivered=delivered)


def test_delivery_workers_and_catch_up_runs_post_each_alert_once(
    flow_settings: Settings, sandbox: SandboxControl
) -> None:
    started = time.monotonic()
    tag = f"h{uuid.uuid4().hex[:6]}"
    settings = flow_settings.with_overrides(
        slack_channel_rate_per_s=4.0,
        slack_channel_burst=1,
        stream_group_prefix=f"faults-{tag}",
        delivery_lease_s=15,
        slack_call_timeout_s=5,
    )
    seed_orgs(settings, sandbox, ORGS)
    wave = burst(ORGS, EVENTS, tag=tag, seed=97, provisioning_share=1.0)
    enrich_group = stream_group(settings.stream_group_prefix, SOURCE)
    delivery_group = stream_group(settings.stream_group_prefix, DELIVERY_STREAM)

    running = [start_worker(settings, SOURCE)]
    try:
        running += [start_worker(settings, DELIVERY_STREAM) for _ in range(2)]
        warm = warm_up(settings, ORGS, f"{tag}w", [(enrich_group, SOURCE),
                                                   (delivery_group, DELIVERY_STREAM)])  # fmt: skip
        wait_for(lambda: warm.expected <= set(arrivals(sandbox)), 30, "the warm-up alerts")
        wait_for(lambda: all(w.worker.loop.partitions for w in running[1:]), 20,
                 "both delivery workers holding partitions")  # fmt: skip
        posted_before = [w.worker.loop.stats.outputs for w in running[1:]]
        starts = _ends(settings, DELIVERY_STREAM)
        produce_to(settings, SOURCE, wave.events)
        source_ends = _ends(settings, SOURCE)
        wait_for(lambda: committed(settings, enrich_group, SOURCE, PARTITIONS) == source_ends, 20,
                 "the burst enriched")  # fmt: skip
        ends = _ends(settings, DELIVERY_STREAM)
        ranges = [OffsetRange(DELIVERY_STREAM, p, starts[p], ends[p]) for p in sorted(ends)]
        assert sum(r.end - r.start for r in ranges) == EVENTS
        already = len(wave.expected & set(arrivals(sandbox)))
        outcomes: list[dict[str, object]] = [{} for _ in ranges]
        threads = [
            threading.Thread(target=_catch_up, args=(settings, rng, out))
            for rng, out in zip(ranges, outcomes, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CATCH_UP_DEADLINE_S + 30)
        expected = wave.expected | warm.expected
        wait_for(lambda: expected <= set(arrivals(sandbox)), 30, "every alert in the sandbox")
        wait_for(lambda: committed(settings, delivery_group, DELIVERY_STREAM, PARTITIONS) == ends,
                 30, "the delivery workers done")  # fmt: skip
        time.sleep(2)  # a late duplicate would land here
        seen = arrivals(sandbox)
        worker_posts = [w.worker.loop.stats.outputs - n
                        for w, n in zip(running[1:], posted_before, strict=True)]  # fmt: skip
    finally:
        drains = [w.halt() for w in running if w.thread.is_alive()]
    for item in running:
        assert item.errors == [], item.errors
    for out in outcomes:
        assert "error" not in out, out["error"]

    posted = [alert_id for alert_id, times in seen.items() for _ in times]
    figures = tally(expected, posted)
    catch_up_posts = sum(int(out["delivered"]) for out in outcomes)  # type: ignore[call-overload]
    catch_up_runs = sum(int(out["runs"]) for out in outcomes)  # type: ignore[call-overload]

    ledger = DeliveryLedger(settings.effective_ledger_url)
    try:
        delivered_rows = Counter(
            alert_id
            for alert_id in wave.expected
            for row in ledger.lookup(alert_id)
            if row.state == "delivered"
        )
    finally:
        ledger.close()
    ok_ids: dict[str, set[str]] = defaultdict(set)
    for rec in read_topic(settings, topics.SLACK_RESPONSES):
        response = json.loads(rec.value or b"{}")
        if response.get("outcome") == "ok":
            ok_ids[response["alert_id"]].add(response["response_id"])
    dlq = read_topic(settings, topics.SLACK_MESSAGES_DLQ)
    record(
        "stream: hand-over (2 delivery workers racing catch-up runs)",
        trials=len(ranges),
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(dlq),
        notes=(
            f"{EVENTS} alerts to {len(ORGS)} DMs paced 4/s each; {already} posted by the workers "
            f"before the {len(ranges)} catch-up runs (one per partition, {catch_up_runs} "
            f"launches) started; posts by worker {worker_posts}, by catch-up {catch_up_posts}; "
            f"drain {max(drains, default=0):.2f} s; {time.monotonic() - started:.0f} s"
        ),
    )
    assert figures["lost"] == 0, sorted(expected - set(posted))[:5]
    assert figures["duplicated"] == 0
    assert figures["unexpected"] == 0
    assert sum(worker_posts) + catch_up_posts == EVENTS, (worker_posts, catch_up_posts)
    assert catch_up_posts > 0 and all(n > 0 for n in worker_posts), "no race took place"
    assert all(delivered_rows[a] == 1 for a in wave.expected), delivered_rows.most_common(3)
    missing = [a for a in wave.expected if len(ok_ids.get(a, ())) != 1]
    assert missing == [], f"{len(missing)} alerts without exactly one ok outcome: {missing[:3]}"
    assert dlq == []
