"""Stream mode: a worker process SIGKILLed in the middle of a burst, a replacement started.

An enrichment worker and a delivery worker run as ``alert-platform stream`` processes (their
own consumer groups, a broker of the module's own, the Slack sandbox without a rate limit,
pacing raised). A burst of 300 provisioning failures over 50 assignees (each its own DM lane)
goes in at 100 events/s; mid-burst a worker is SIGKILLed:

* ``enrichment``: the enrichment worker, by the crash hook once a batch's alerts are flushed
  to ``slack-messages`` and before its offsets are committed, ~120 records in (the replacement
  enriches the batch again: the ledger must suppress the repeat);
* ``delivery``: the delivery worker, by the crash hook right after Slack accepted one alert and
  before the ledger heard of it (the worst moment: the replacement must find it in Slack's
  history, after the dead worker's claim lease of 15 s);
* ``both``: both workers SIGKILLed by the test at the same random moment.

As a supervisor would, a replacement starts as soon as the death is seen. Every expected alert
must then be in the sandbox exactly once, the last within 30 s of the kill. Before the burst a
warm-up gives every partition a committed position (a group without one starts at the end:
that share is the catch-up runs', not the stream's).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path

import pytest

from alert_platform import topics
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.stream.names import DELIVERY_STREAM, stream_group
from tests.faults.harness import (
    CRASH_ENV,
    CRASH_MARKER_ENV,
    alert_id_of,
    burst,
    fault_orgs,
    read_topic,
    wait_for,
)
from tests.faults.results import record, tally
from tests.faults.stream_procs import (
    CRASH_BEFORE_STREAM_COMMIT_ENV,
    StreamProcess,
    produce_to,
    seed_orgs,
    slack_message_ids,
    stopping,
    wait_all_posted,
    warm_up,
    worker_env,
)

pytestmark = [pytest.mark.integration]

ORGS = fault_orgs("skil", 50)
EVENTS = 300
RATE = 100.0  # events/s: the burst lasts 3 s
RECOVERY_BOUND_S = 30.0
SOURCE = topics.NOTIFICATIONS


def _alert_of(value: bytes) -> str:
    event = json.loads(value)
    labels = json.loads(event["data"])["labels"]
    return alert_id_of(labels["org_id"], labels["env_id"], labels["connector_id"])


@pytest.mark.parametrize("victim", ["enrichment", "delivery", "both"])
def test_worker_sigkilled_mid_burst_loses_and_duplicates_nothing(
    victim: str, flow_settings: Settings, sandbox: SandboxControl, tmp_path: Path
) -> None:
    started = time.monotonic()
    settings = flow_settings
    seed_orgs(settings, sandbox, ORGS)
    tag = f"k{uuid.uuid4().hex[:6]}"
    prefix = f"faults-{tag}"
    rng = random.Random(tag)
    wave = burst(ORGS, EVENTS, tag=tag, seed=rng.randrange(1 << 30), provisioning_share=1.0)
    assert len(wave.expected) == EVENTS
    env = worker_env(settings, prefix)
    marker = tmp_path / "crashes.txt"
    crash_alert = _alert_of(wave.events[EVENTS * 2 // 5][1] or b"")
    enrich_env = delivery_env = env
    if victim == "delivery":  # SIGKILL right after Slack accepted this alert
        delivery_env = {**env, CRASH_ENV: crash_alert, CRASH_MARKER_ENV: str(marker)}
    elif victim == "enrichment":  # SIGKILL after a batch's effects, before its commit
        enrich_env = {**env, CRASH_BEFORE_STREAM_COMMIT_ENV: str(EVENTS * 2 // 5),
                      CRASH_MARKER_ENV: str(marker)}  # fmt: skip

    procs: list[StreamProcess] = []
    with stopping(procs):
        enrich = StreamProcess("enrich-1", [SOURCE], enrich_env, tmp_path / "enrich-1.log")
        enrich.start()
        deliver = StreamProcess(
            "deliver-1", [DELIVERY_STREAM], delivery_env, tmp_path / "deliver-1.log"
        ).start()
        procs += [enrich, deliver]
        enrich.wait_joined()
        deliver.wait_joined()
        groups = [(stream_group(prefix, s), s) for s in (SOURCE, DELIVERY_STREAM)]
        warm = warm_up(settings, ORGS, f"{tag}w", groups)
        expected = wave.expected | warm.expected

        producer = threading.Thread(
            target=produce_to, args=(settings, SOURCE, wave.events), kwargs={"per_second": RATE}
        )
        producer.start()
        burst_started = time.monotonic()
        replacements: list[str] = []
        if victim != "both":
            hooked = deliver if victim == "delivery" else enrich
            wait_for(lambda: not hooked.alive(), 20, "the crash hook's SIGKILL", interval=0.02)
            killed_at = marker.stat().st_mtime  # written just before the hook's SIGKILL
            assert hooked.returncode() == -9, hooked.tail()
        else:
            time.sleep(rng.uniform(0.6, 2.4))  # somewhere in the 3 s burst
            killed_at = min(proc.kill() for proc in (enrich, deliver))
        killed_in_burst = time.monotonic() - burst_started
        if not enrich.alive():
            enrich = StreamProcess("enrich-2", [SOURCE], env, tmp_path / "enrich-2.log").start()
            procs.append(enrich)
            replacements.append("enrichment")
        if not deliver.alive():
            deliver = StreamProcess(
                "deliver-2", [DELIVERY_STREAM], env, tmp_path / "deliver-2.log"
            ).start()
            procs.append(deliver)
            replacements.append("delivery")
        producer.join(30)
        assert not producer.is_alive()

        seen = wait_all_posted(sandbox, expected, procs, (enrich, deliver), 50)
    posted = [alert_id for alert_id, times in seen.items() for _ in times]
    figures = tally(expected, posted)
    last = max(max(times) for alert_id, times in seen.items() if alert_id in expected)
    recovery = last - killed_at
    ids = [alert_id for alert_id in slack_message_ids(settings) if tag in alert_id]
    rederived = len(ids) - len(set(ids))
    dlq = read_topic(settings, topics.ALERTS_DLQ) + read_topic(settings, topics.SLACK_MESSAGES_DLQ)
    record(
        f"stream: worker SIGKILL mid-burst ({victim})",
        trials=2 if victim == "both" else 1,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(dlq),
        notes=(
            f"{EVENTS} events at {RATE:g}/s over {len(ORGS)} assignees, kill {killed_in_burst:.1f}"
            f" s into the burst, replacement(s) {', '.join(replacements)}; last alert "
            f"{recovery:.1f} s after the kill; {rederived} alert(s) enriched twice (repeated "
            f"batch), {figures['duplicated']} posted twice; {time.monotonic() - started:.0f} s"
        ),
        recovery_s=round(recovery, 2),
    )
    assert figures["lost"] == 0, sorted(expected - set(posted))[:5]
    assert figures["duplicated"] == 0
    assert figures["unexpected"] == 0
    assert figures["delivered_once"] == len(expected) >= EVENTS
    assert dlq == []
    assert recovery <= RECOVERY_BOUND_S, f"last alert {recovery:.1f} s after the kill"
    if victim != "both":
        assert len(marker.read_text().split()) == 1
    if victim == "enrichment":
        assert rederived >= 1, "the batch the worker died in was enriched again"
