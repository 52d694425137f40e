"""Delivery benchmark: 2,000 alerts over 50 channels against the Slack sandbox at Slack's limits.

    .venv/bin/python bench/bench_delivery.py [--alerts 2000] [--channels 50]
        [--sandbox thread|process] [--ledger-url URL] [--rate 0.95] [--burst 2]

Starts a sandbox on a free port with its default per-channel limit (1 msg/s, burst 3, 429 +
Retry-After beyond), registers the channels, delivers every alert with ``deliver_batch``
(SQLite ledger in a temp dir unless ``--ledger-url``), then reads back what the sandbox holds.
Prints achieved msgs/s, the ceiling (channels x per-channel rate), their ratio (target >= 0.90),
the 429 count, losses (alerts never delivered) and duplicates (alerts posted more than once).
Exits 1 when a loss or a duplicate is found.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alert_platform.delivery.deliverer import ChannelPacer, deliver_batch
from alert_platform.delivery.ledger import DeliveryLedger
from alert_platform.delivery.messages import OutboundMessage
from alert_platform.local.ports import LOCALHOST, find_free_port
from alert_platform.local.profile import local_settings
from alert_platform.local.sandbox import SandboxControl, SandboxServer
from alert_platform.local.sandbox.state import DEFAULT_BURST, DEFAULT_PER_SECOND
from alert_platform.settings import LOCAL_SLACK_TOKEN
from alert_platform.slack.client import make_web_client


def make_alerts(n_alerts: int, channel_ids: list[str]) -> list[OutboundMessage]:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    run = f"{time.time_ns():x}"
    return [
        OutboundMessage(
            alert_id=f"bench:{run}:{i:05d}",
            channel_id=channel_ids[i % len(channel_ids)],
            text=f"Bench alert {i}: connector postgres-cdc-{i % 97} failed",
            event_time=base + timedelta(milliseconds=i),
            pipeline="bench",
            blocks=[
                {"type": "header", "text": {"type": "plain_text", "text": f"Alert {i}"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*Alert* `{i}`"}},
            ],
        )
        for i in range(n_alerts)
    ]


def start_sandbox(mode: str):
    """(api url, stop callable) for a sandbox at default limits on a free port."""
    if mode == "thread":
        server = SandboxServer(LOCALHOST, 0, LOCAL_SLACK_TOKEN).start()
        return server.url, server.stop
    port = find_free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "alert_platform.local.sandbox", "--host", LOCALHOST,
         "--port", str(port), "--token", LOCAL_SLACK_TOKEN],
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    url = f"http://{LOCALHOST}:{port}/api/"

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    try:
        SandboxControl(url).wait_ready(timeout=15)
    except TimeoutError:
        stop()
        raise
    return url, stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--sandbox", choices=("thread", "process"), default="process")
    parser.add_argument("--ledger-url", default="")
    parser.add_argument("--rate", type=float, default=None, help="pacing msgs/s per channel")
    parser.add_argument("--burst", type=int, default=None, help="pacing burst per channel")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args(argv)

    url, stop = start_sandbox(args.sandbox)
    try:
        control = SandboxControl(url)
        channel_ids = [f"C0BENCH{i:03d}" for i in range(args.channels)]
        for i, channel_id in enumerate(channel_ids):
            control.add_channel(channel_id, f"bench-{i:03d}")
        alerts = make_alerts(args.alerts, channel_ids)
        settings = local_settings(slack_api_url=url)
        client = make_web_client(settings, timeout=10)
        pacer_kwargs = {}
        if args.rate is not None:
            pacer_kwargs["rate"] = args.rate
        if args.burst is not None:
            pacer_kwargs["burst"] = args.burst
        pacer = ChannelPacer(**pacer_kwargs)
        with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
            ledger_url = args.ledger_url or f"sqlite:///{tmp}/ledger.sqlite3"
            ledger = DeliveryLedger(ledger_url, table_name=f"bench_ledger_{time.time_ns():x}")
            responses: list[dict] = []
            started = time.monotonic()
            report = deliver_batch(
                alerts, client, ledger, window=24, on_response=responses.append, pacer=pacer
            )
            elapsed = time.monotonic() - started
            if args.ledger_url:
                ledger.table.drop(ledger.engine)
            ledger.close()
        stats = control.stats()
        held = Counter(
            (m.get("metadata") or {}).get("event_payload", {}).get("alert_id")
            for m in control.messages()
        )
    finally:
        stop()

    expected = {a.alert_id for a in alerts}
    losses = len(expected - set(held))
    duplicates = sum(1 for alert_id, n in held.items() if alert_id in expected and n > 1)
    rate = args.alerts / elapsed
    ceiling = args.channels * DEFAULT_PER_SECOND
    result = {
        "alerts": args.alerts,
        "channels": args.channels,
        "sandbox_limit": f"{DEFAULT_PER_SECOND:g} msg/s/channel, burst {DEFAULT_BURST}",
        "pacing": f"{pacer.rate:g} msg/s/channel, burst {pacer.burst}",
        "elapsed_s": round(elapsed, 2),
        "achieved_msgs_per_s": round(rate, 2),
        "ceiling_msgs_per_s": ceiling,
        "ratio": round(rate / ceiling, 3),
        "target_ratio": 0.90,
        "http_429": stats.get("http_429", 0),
        "retries": report.retries,
        "delivered": report.delivered,
        "losses": losses,
        "duplicates": duplicates,
        "responses": len(responses),
    }
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 1 if losses or duplicates else 0


if __name__ == "__main__":
    sys.exit(main())
