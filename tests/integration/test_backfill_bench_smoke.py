"""`bench/bench_backfill.py` end to end on a small workload: its own stack, the "live" history,
`alert-platform backfill --local --deliver` as a subprocess, and its correctness checks (every
expected alert in the sandbox exactly once; the pre-delivered ones skipped, not re-posted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def test_backfill_bench_small_run_is_correct() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_backfill.py", "--events", "2000", "--outside", "200",
         "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pass"] and result["problems"] == []
    assert result["events"] == 2000 and result["located_by"] == "run_index"
    expected, before = result["expected_alerts"], result["predelivered"]
    assert 0 < before < expected == result["alerts"]
    assert result["posted"] == expected - before
    assert result["skipped_already_delivered"] == before
    check = result["check"]
    assert check["lost"] == check["duplicated"] == check["unexpected"] == check["misrouted"] == 0
    assert check["held_once"] == check["expected_in_slack"] > expected
    assert result["http_429"] == 0 and result["dead_lettered"] == 0
    assert set(result["split_s"]) >= {"locate_window", "enrichment", "delivery"}
