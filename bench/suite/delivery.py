"""Section 4: Slack delivery, achieved messages/s against the sandbox's rate-limit ceiling.

Runs ``bench/bench_delivery.py``'s own measurement (a sandbox at its default limits, 50
channels, ``deliver_batch`` with a SQLite ledger, losses and duplicates read back from the
sandbox) and keeps its JSON result.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import orjson

from bench import bench_delivery

TARGET_RATIO = 0.90


def run_delivery(alerts: int, channels: int = 50) -> dict[str, Any]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = bench_delivery.main(["--alerts", str(alerts), "--channels", str(channels), "--json"])
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("{")]
    if not lines:
        return {"alerts": alerts, "problems": ["bench_delivery printed no result"], "pass": False}
    result: dict[str, Any] = orjson.loads(lines[-1])
    problems = []
    if code != 0 or result.get("losses") or result.get("duplicates"):
        problems.append(f"losses {result.get('losses')}, duplicates {result.get('duplicates')}")
    result["problems"] = problems
    result["pass"] = not problems and result.get("ratio", 0.0) >= TARGET_RATIO
    return result
