"""A short run of the stream-mode benchmark (bench/bench_stream.py) with tiny numbers: it prints
every figure against its target, writes its results, and the stream delivered every alert of
the trickle and of the burst exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURES = (
    "trickle p50 produce -> Slack, stream",
    "trickle p99 produce -> Slack, stream",
    "trickle CPU, stream worker + broker (cores)",
    "burst p99 produce -> Slack",
    "1 worker / batch run (events/s)",
    "2 workers / 1 worker (events/s)",
)


def test_bench_stream_prints_its_figures_and_delivers_exactly_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_stream", "--trickle-seconds", "6",
         "--trickle-rate", "1", "--idle-seconds", "1", "--burst-alerts", "60",
         "--burst-users", "12", "--events", "3000", "--batch-latency", "skip",
         "--only", "trickle,burst,throughput",
         "--results-dir", str(tmp_path), "--name", "smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for figure in FIGURES:
        assert figure in done.stdout, f"{figure!r} not printed:\n{done.stdout}"
    assert "checks: all held" in done.stdout
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.md").read_text().count("| ") >= len(FIGURES)
    for section, sent in (("trickle", 6), ("burst", 60)):
        figures = results[section]
        assert figures["sent"] == sent
        assert figures["delivered"] == sent, figures
        assert figures["missing"] == 0 and figures["duplicated"] == 0, figures
        assert figures["stop"]["drained"], figures["stop"]
        assert 0 < figures["latency_s"]["p50"] <= figures["latency_s"]["p99"] < 60
    trickle = results["trickle"]
    assert trickle["cores"]["stream"] > 0 and trickle["cores"]["broker"] > 0
    throughput = results["throughput"]
    assert set(throughput["events_s"]) == {"batch", "stream_1", "stream_2"}
    assert throughput["stream_vs_batch"] > 0 and throughput["two_vs_one"] > 0
    for row in throughput["runs"]:
        assert row["records"] == 3000 and row["problems"] == [], row
    two = next(r for r in throughput["runs"] if r["workers"] == 2 and r["contender"] == "stream")
    assert sorted(p for w in two["per_worker"] for p in w["partitions"]) == [0, 1, 2, 3]
    assert {row["figure"] for row in results["figures"]} == set(FIGURES)
