"""Fault rows "crash between commit and response" and "slow Slack", on the real local stack
(a private broker with the real topics, the Slack sandbox, a SQLite ledger of the test's own).

**Crash between commit and response**: a delivery process posts its alerts, records them in the
ledger, and dies (``os._exit``, injected by the test harness's ``sitecustomize``) before the
producer flush of ``slack-responses``. The next run, once the dead run's lease has passed,
re-produces what the dead run left in the outbox. Every outcome is on ``slack-responses`` at
least once, repeats share a ``response_id``, no alert is posted twice.

**Slow Slack**: ``chat.postMessage`` calls that answer slower than the call deadline (an answer
dripped one byte every 2 s, which no per-socket timeout ends; the sandbox holding the answer
back) and 429s with ``Retry-After: inf`` / huge / ``nan`` / negative / garbage. No alert posted
twice, none lost, and the run ends in bounded time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from alert_platform.delivery.deliverer import ChannelPacer, DeliveryIncompleteError
from alert_platform.delivery.outbox import Outbox
from alert_platform.delivery.runner import run_delivery
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.local.sandbox.control import SandboxControl
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
from tests.faults.harness import (
    CRASH_BEFORE_FLUSH_ENV,
    CRASH_BEFORE_FLUSH_EXIT,
    with_fault_injection,
)
from tests.faults.results import record, tally
from tests.integration.delivery_runner_helpers import (
    SlowSlack,
    held,
    make_values,
    produce_values,
    responses,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 15.0  # the smallest lease Settings accepts (>= the call deadline + 5 s)
DEADLINE_S = 2.0
RETRY_AFTER_MAX_S = 3.0
CRASH_TRIALS = 2
CRASH_ALERTS = 12

_CHILD = r"""
import json, sys
from alert_platform.delivery.deliverer import ChannelPacer
from alert_platform.delivery.runner import run_delivery
from alert_platform.kafka.offsets import OffsetRange
from alert_platform.settings import Settings
from alert_platform.slack.client import make_web_client
settings = Settings.from_env()
ranges = [OffsetRange(**r) for r in json.loads(sys.argv[1])]
run_delivery(settings, make_web_client(settings), ranges, pacer=ChannelPacer(200, 50))
print("finished without crashing")
"""


def _channels(sandbox: SandboxControl, count: int) -> list[str]:
    stem = uuid.uuid4().hex[:8].upper()
    ids = [f"C{stem}{i}" for i in range(count)]
    for i, channel_id in enumerate(ids):
        sandbox.add_channel(channel_id, f"fc-{stem.lower()}-{i}")
    return ids


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SLACK_API_URL": settings.slack_api_url,
        "SLACK_BOT_TOKEN": settings.slack_bot_token.get_secret_value(),
        "ALERT_LEDGER_URL": settings.effective_ledger_url,
        "ALERT_PLATFORM_DATA_DIR": str(settings.data_dir),
        "ALERT_PLATFORM_DELIVERY_LEASE_S": f"{LEASE_S:g}",
        "SLACK_CALL_TIMEOUT_S": "5",
    }


def _crashing_run(settings: Settings, ranges: list[OffsetRange]) -> subprocess.CompletedProcess:
    arg = json.dumps([r.__dict__ for r in ranges])
    return subprocess.run(
        [sys.executable, "-c", _CHILD, arg],
        cwd=REPO,
        env=with_fault_injection({**_env(settings), CRASH_BEFORE_FLUSH_ENV: "1"}),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_crash_between_ledger_commit_and_response_flush(
    flow_settings: Settings, sandbox: SandboxControl, tmp_path: Path
) -> None:
    settings = flow_settings.with_overrides(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        delivery_lease_s=LEASE_S,
        slack_call_timeout_s=5.0,
    )
    channels = _channels(sandbox, 3)
    expected: list[str] = []
    batches: list[tuple[list[str], list[OffsetRange]]] = []
    for _ in range(CRASH_TRIALS):
        values = make_values(channels, per_channel=CRASH_ALERTS // len(channels))
        ids = [v["alert_id"] for v in values]
        expected += ids
        batches.append((ids, produce_values(settings, values, key=uuid.uuid4().hex.encode())))

    crashed = 0
    before_replay = 0
    for ids, ranges in batches:
        proc = _crashing_run(settings, ranges)
        assert proc.returncode == CRASH_BEFORE_FLUSH_EXIT, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "finished" not in proc.stdout
        crashed += 1
        before_replay += len({r["alert_id"] for r in responses(settings, ids)})
    with Outbox(settings.effective_ledger_url) as outbox:
        left_unsent = outbox.count(unsent=True)
    time.sleep(LEASE_S + 1.0)  # the dead runs' outbox rows are past the grace now
    replayed = 0
    client = make_web_client(settings)
    for _ids, ranges in batches:  # the next runs (e.g. the sensor re-launching the ranges)
        report = run_delivery(settings, client, ranges, pacer=ChannelPacer(200, 50))
        replayed += report.responses_replayed
        assert report.delivery is not None and report.delivery.posted == 0

    posted = held(sandbox, expected)
    figures = tally(expected, list(posted.elements()))
    records = responses(settings, expected)
    ok_ids: dict[str, set[str]] = defaultdict(set)
    copies: dict[str, int] = defaultdict(int)
    for value in records:
        if value["outcome"] == "ok":
            ok_ids[value["alert_id"]].add(value["response_id"])
            copies[value["alert_id"]] += 1
    responses_lost = sum(1 for a in expected if not ok_ids.get(a))
    split_ids = sum(1 for ids in ok_ids.values() if len(ids) > 1)
    repeats = sum(n - 1 for n in copies.values())
    with Outbox(settings.effective_ledger_url) as outbox:
        still_unsent = outbox.count(unsent=True)
    record(
        "crash between commit and response",
        trials=crashed,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"] + responses_lost,
        duplicated=figures["duplicated"],
        dead_lettered=0,
        notes=(
            f"{crashed} delivery processes exited after the ledger commit, before the "
            f"slack-responses flush; {before_replay} of {len(expected)} responses reached the "
            f"topic before dying, {left_unsent} outbox rows left unsent, {replayed} re-produced "
            f"by the next runs; {repeats} repeated records, all with their first's response_id; "
            f"{responses_lost} responses lost"
        ),
        responses_lost=responses_lost,
        responses_replayed=replayed,
        repeated_records=repeats,
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert figures["delivered_once"] == len(expected) == CRASH_TRIALS * CRASH_ALERTS
    assert left_unsent >= len(expected)  # nothing was marked sent by the dead runs
    assert replayed == left_unsent and still_unsent == 0
    assert responses_lost == 0, "every outcome reaches slack-responses"
    assert split_ids == 0, "a repeated outcome carries the same response_id"


HOSTILE_RETRY_AFTER = ["inf", "1e12", "nan", "-3", "garbage", "Infinity"]
DRIPS = 3
DRIP_S = 1.0  # per byte: below the per-socket timeout (the deadline), so only a deadline ends it
HANGS = 2


def _run_bounded(fn: Any, timeout: float) -> tuple[Any, BaseException | None, float]:
    """``fn()`` on a thread; its result, its exception and how long it took (``timeout``
    exceeded: result and exception ``None``)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    elapsed = time.monotonic() - started
    return box.get("result"), box.get("error"), elapsed


def test_slow_slack_and_hostile_retry_after(
    flow_settings: Settings, sandbox: SandboxControl, tmp_path: Path
) -> None:
    front = SlowSlack(flow_settings.slack_api_url)
    try:
        settings = flow_settings.with_overrides(
            ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
            slack_api_url=front.api_url,
            slack_call_timeout_s=DEADLINE_S,
            delivery_lease_s=LEASE_S,
            slack_retry_after_max_s=RETRY_AFTER_MAX_S,
        )
        channels = _channels(sandbox, 4)
        values = make_values(channels, per_channel=4)
        expected = [v["alert_id"] for v in values]
        ranges = produce_values(settings, values, key=uuid.uuid4().hex.encode())
        # The first calls pass through to the sandbox, which holds their answers back (its own
        # hang faults); then the front's 429s and dripped answers.
        steps: list[tuple[str, Any]] = [("pass", None)] * HANGS
        for index, value in enumerate(HOSTILE_RETRY_AFTER):
            steps.append(("retry_after", value))
            if index < DRIPS:
                steps.append(("drip", DRIP_S))  # a whole answer takes minutes
        front.script(steps)
        sandbox.inject_faults(HANGS, "hang", hang_seconds=3 * DEADLINE_S,
                              methods=["chat.postMessage"])  # fmt: skip
        client = make_web_client(settings)
        runs = 0
        incomplete = 0
        elapsed_total = 0.0
        retries: dict[str, int] = defaultdict(int)
        report = None
        while runs < 3:
            runs += 1
            report, error, elapsed = _run_bounded(
                lambda: run_delivery(settings, client, ranges, pacer=ChannelPacer(200, 50)),
                timeout=180,
            )
            elapsed_total += elapsed
            assert elapsed < 180, "the delivery run hung"
            if isinstance(error, DeliveryIncompleteError):
                incomplete += 1
                for cause, n in error.report.retries.items():
                    retries[cause] += n
                continue
            if error is not None:
                raise error
            for cause, n in report.delivery.retries.items():
                retries[cause] += n
            break
        stats = sandbox.stats()
    finally:
        front.close()

    posted = held(sandbox, expected)
    figures = tally(expected, list(posted.elements()))
    records = responses(settings, expected)
    answered = {r["alert_id"] for r in records if r["outcome"] == "ok"}
    hangs = int(stats.get("faults_by_kind", {}).get("hang", 0))
    served = dict(front.served)
    record(
        "slow Slack (past the call deadline, hostile Retry-After)",
        trials=served.get("retry_after", 0) + served.get("drip", 0) + hangs,
        alerts_expected=figures["alerts_expected"],
        delivered_once=figures["delivered_once"],
        lost=figures["lost"],
        duplicated=figures["duplicated"],
        dead_lettered=len(report.delivery.dead_letters) if report and report.delivery else 0,
        notes=(
            f"{served.get('drip', 0)} answers dripped 1 byte/{DRIP_S:g} s and {hangs} held "
            f"back by the sandbox (deadline {DEADLINE_S:g} s), "
            f"{served.get('retry_after', 0)} 429s with Retry-After {HOSTILE_RETRY_AFTER} "
            f"(capped at {RETRY_AFTER_MAX_S:g} s); "
            f"retries {dict(retries)}; {runs} run(s) ({incomplete} incomplete), "
            f"{elapsed_total:.1f} s in all; {len(answered)} ok responses"
        ),
        retries=dict(retries),
        elapsed_s=round(elapsed_total, 1),
    )
    assert served.get("retry_after") == len(HOSTILE_RETRY_AFTER)
    assert served.get("drip") == DRIPS and hangs == HANGS
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert figures["delivered_once"] == len(expected)
    assert answered == set(expected)
    assert retries["rate_limited"] >= len(HOSTILE_RETRY_AFTER)
    assert retries["timeout"] >= DRIPS + HANGS
    # Each dripped answer alone would take minutes; the whole run is bounded by the deadline,
    # the Retry-After cap and the settle time (generous margin for a loaded 2-core machine).
    assert elapsed_total < 90, elapsed_total
