"""`python -m bench --quick` end to end on a small workload: the raw ceiling and alert-platform's
Dagster run each on a fresh broker, with their output counts (and alert-platform's messages)
checked against the workload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_counts_match(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "raw,alert-platform",
         "--events", "20000", "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "quick.json").read_text())
    assert (tmp_path / "quick.md").read_text().startswith("# Benchmark results")
    assert results["meta"]["events"] == 20_000
    runs = results["throughput"]["runs"]
    assert sorted((r["contender"], r["partitions"]) for r in runs) == [
        ("alert-platform", 1),
        ("alert-platform", 4),
        ("raw", 1),
        ("raw", 4),
    ]
    alerts = {r["expected_output"] for r in runs if r["contender"] == "alert-platform"}
    assert len(alerts) == 1 and 0 < alerts.pop() < 20_000
    for run in runs:
        assert run["ok"], run
        assert run["output"] == run["expected_output"]
        assert run["inputs"] == 20_000
        if run["contender"] == "raw":
            assert run["output"] == 20_000
        else:
            assert run["content"].startswith("all ")  # every message as the engine renders it
    assert "Enrichment throughput" in done.stdout
