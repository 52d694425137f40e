"""Stream mode: workers join and leave an enrichment group mid-stream; nothing lost or doubled.

Two enrichment workers share the source topic's 4 partitions in one consumer group (each an
``alert-platform stream`` process), one delivery worker posts. A steady stream of 1,200
provisioning failures over 50 assignees goes in at 80 events/s (15 s); 0.5 s in, a third
enrichment worker starts (cooperative-sticky: it takes partitions from the others; a new
process needs ~5 s to ask, the local broker ~3 s for the rebalance rounds); 1 s after it holds
partitions, while events still flow, the first one gets SIGTERM and drains (finishes its batch,
commits, leaves the group; its partitions move at once). Every expected alert must be in the
sandbox exactly once, the drain must take under 10 s, and the group's committed offsets must
reach the end of every partition.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from alert_platform import topics
from alert_platform.kafka.clients import make_consumer
from alert_platform.kafka.offsets import probe_end_offsets
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.stream.names import DELIVERY_STREAM, stream_group
from tests.faults.harness import burst, fault_orgs, read_topic, wait_for
from tests.faults.results import record, tally
from tests.faults.stream_procs import (
    StreamProcess,
    arrivals,
    committed,
    produce_to,
    seed_orgs,
    slack_message_ids,
    stopping,
    wait_all_posted,
    warm_up,
    worker_env,
)

pytestmark = [pytest.mark.integration]

ORGS = fault_orgs("sreb", 50)
EVENTS = 1200
RATE = 80.0  # events/s: 15 s of traffic
JOIN_AT_S = 0.5  # a new process takes ~5 s to ask to join, the local broker ~3 s to rebalance
LEAVE_AFTER_S = 1.0  # after the third worker holds partitions
DRAIN_BOUND_S = 10.0
SOURCE = topics.NOTIFICATIONS
PARTITIONS = 4


def test_worker_added_and_removed_mid_stream(
    flow_settings: Settings, sandbox: SandboxControl, tmp_path: Path
) -> None:
    started = time.monotonic()
    settings = flow_settings
    seed_orgs(settings, sandbox, ORGS)
    tag = f"r{uuid.uuid4().hex[:6]}"
    prefix = f"faults-{tag}"
    group = stream_group(prefix, SOURCE)
    wave = burst(ORGS, EVENTS, tag=tag, seed=4711, provisioning_share=1.0)
    env = worker_env(settings, prefix)

    def worker(name: str, stream: str) -> StreamProcess:
        return StreamProcess(name, [stream], env, tmp_path / f"{name}.log").start()

    procs: list[StreamProcess] = []
    with stopping(procs):
        first, second = worker("enrich-1", SOURCE), worker("enrich-2", SOURCE)
        deliver = worker("deliver-1", DELIVERY_STREAM)
        procs += [first, second, deliver]
        for proc in procs:
            proc.wait_joined()
        wait_for(lambda: len(first.owned() | second.owned()) == PARTITIONS and
                 bool(first.owned()) and bool(second.owned()), 20,
                 "the two workers sharing the partitions", interval=0.1)  # fmt: skip
        warm = warm_up(settings, ORGS, f"{tag}w", [(group, SOURCE),
                       (stream_group(prefix, DELIVERY_STREAM), DELIVERY_STREAM)])  # fmt: skip
        expected = wave.expected | warm.expected
        before = (sorted(first.owned()), sorted(second.owned()))

        producer = threading.Thread(
            target=produce_to, args=(settings, SOURCE, wave.events), kwargs={"per_second": RATE}
        )
        stream_started = time.monotonic()
        producer.start()
        time.sleep(JOIN_AT_S)
        third = worker("enrich-3", SOURCE)
        procs.append(third)
        wait_for(lambda: bool(third.owned()), 15, "the third worker taking partitions",
                 interval=0.05)  # fmt: skip
        joined_after = time.monotonic() - stream_started
        assert producer.is_alive(), "the third worker joined after the stream ended"
        time.sleep(LEAVE_AFTER_S)
        left_at = time.monotonic() - stream_started
        assert producer.is_alive(), "the first worker would leave after the stream ended"
        drain_s = first.terminate(timeout=30)
        producer.join(30)
        assert not producer.is_alive()
        assert first.returncode() == 0, first.tail()
        assert "stream workers drained and stopped" in first.output()
        wait_for(lambda: second.owned() | third.owned() == set(range(PARTITIONS)), 15,
                 "the drained worker's partitions taken over", interval=0.1)  # fmt: skip

        seen = wait_all_posted(sandbox, expected, procs, (second, third, deliver), 40)
        consumer = make_consumer(settings)
        try:
            ends = probe_end_offsets(consumer, SOURCE)
        finally:
            consumer.close()
        commits = committed(settings, group, SOURCE, PARTITIONS)
        after = (sorted(second.owned()), sorted(third.owned()))

    posted = [alert_id for alert_id, times in seen.items() for _ in times]
    figures = tally(expected, posted)
    ids = [alert_id for alert_id in slack_message_ids(settings) if tag in alert_id]
    rederived = len(ids) - len(set(ids))
    dlq = read_topic(settings, topics.ALERTS_DLQ) + read_topic(settings, topics.SLACK_MESSAGES_DLQ)
    record(
        "stream: rebalance (worker added and removed mid-stream)",
        trials=2,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(dlq),
        notes=(
            f"{EVENTS} events at {RATE:g}/s; partitions {before[0]}+{before[1]}, a 3rd worker "
            f"holding partitions {joined_after:.1f} s in, the 1st SIGTERMed {left_at:.1f} s in "
            f"(drain {drain_s:.2f} s), then {after[0]}+{after[1]}; {rederived} alert(s) enriched "
            f"twice, {figures['duplicated']} posted twice; {time.monotonic() - started:.0f} s"
        ),
        drain_s=round(drain_s, 2),
    )
    assert figures["lost"] == 0, sorted(expected - set(posted))[:5]
    assert figures["duplicated"] == 0
    assert figures["unexpected"] == 0
    assert figures["delivered_once"] == len(expected) >= EVENTS
    assert dlq == []
    assert drain_s < DRAIN_BOUND_S
    assert commits == ends, f"committed {commits} vs end {ends}"


PACED_ORGS = fault_orgs("sdrn", 2)
PACED_EVENTS = 60  # 30 a DM: ~15 s a lane at Slack's pace, split over two workers


def test_delivery_worker_sigtermed_mid_paced_batch_drains_in_time(
    flow_settings: Settings, sandbox: SandboxControl, tmp_path: Path
) -> None:
    """Two delivery workers in one group post at Slack's own pace (0.95 message/s per DM, the
    default), so a micro-batch takes many seconds; one gets SIGTERM 3 s into it. It must exit
    within 10 s (stop claiming, finish the send in flight, leave the rest uncommitted), and the
    other worker must post what it left: every alert exactly once."""
    started = time.monotonic()
    settings = flow_settings
    seed_orgs(settings, sandbox, PACED_ORGS)
    tag = f"d{uuid.uuid4().hex[:6]}"
    prefix = f"faults-{tag}"
    wave = burst(PACED_ORGS, PACED_EVENTS, tag=tag, seed=5, provisioning_share=1.0)
    env = worker_env(settings, prefix, SLACK_CHANNEL_RATE_PER_S="0.95", SLACK_CHANNEL_BURST="2")

    def worker(name: str, stream: str) -> StreamProcess:
        return StreamProcess(name, [stream], env, tmp_path / f"{name}.log").start()

    procs: list[StreamProcess] = []
    with stopping(procs):
        enrich = worker("enrich-1", SOURCE)
        first, second = worker("deliver-1", DELIVERY_STREAM), worker("deliver-2", DELIVERY_STREAM)
        procs += [enrich, first, second]
        for proc in procs:
            proc.wait_joined()
        wait_for(lambda: bool(first.owned()) and bool(second.owned()), 20,
                 "the two delivery workers sharing the partitions", interval=0.1)  # fmt: skip
        groups = [(stream_group(prefix, s), s) for s in (SOURCE, DELIVERY_STREAM)]
        warm = warm_up(settings, PACED_ORGS, f"{tag}w", groups)
        wait_for(lambda: warm.expected <= set(arrivals(sandbox)), 30, "the warm-up alerts")
        expected = wave.expected | warm.expected
        produce_to(settings, SOURCE, wave.events)
        time.sleep(3.0)
        drain_s = first.terminate(timeout=60)
        assert first.returncode() == 0, first.tail()
        seen = wait_all_posted(sandbox, expected, procs, (enrich, second), 50)
    posted = [alert_id for alert_id, times in seen.items() for _ in times]
    figures = tally(expected, posted)
    record(
        "stream: SIGTERM drain of a delivery worker mid-batch (Slack's pace)",
        trials=1,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=0,
        notes=(
            f"{PACED_EVENTS} alerts to {len(PACED_ORGS)} DMs at 0.95/s per DM, 2 delivery "
            f"workers; SIGTERM 3 s in: drain {drain_s:.2f} s; {time.monotonic() - started:.0f} s"
        ),
        drain_s=round(drain_s, 2),
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert drain_s < DRAIN_BOUND_S, f"drain took {drain_s:.1f} s"
