"""Scenario figures, one JSON line each, for ``python -m tests.faults.report``.

The file is ``.alert-platform/fault-results.jsonl`` under the repository, or the path in the
environment variable ``ALERT_PLATFORM_FAULT_RESULTS``. Lines are appended; the report keeps the
latest line per scenario.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_ENV = "ALERT_PLATFORM_FAULT_RESULTS"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = REPO_ROOT / ".alert-platform" / "fault-results.jsonl"
FIELDS = (
    "scenario",
    "trials",
    "alerts_expected",
    "delivered_once",
    "lost",
    "duplicated",
    "dead_lettered",
)


def results_path() -> Path:
    raw = os.environ.get(RESULTS_ENV, "").strip()
    return Path(raw) if raw else DEFAULT_RESULTS


def tally(expected: Iterable[str], posted: Iterable[str]) -> dict[str, int]:
    """``alerts_expected``, ``delivered_once``, ``lost``, ``duplicated`` (any id posted more
    than once, expected or not) and ``unexpected`` (ids posted that nobody expected)."""
    wanted = set(expected)
    counts: dict[str, int] = {}
    for alert_id in posted:
        counts[alert_id] = counts.get(alert_id, 0) + 1
    return {
        "alerts_expected": len(wanted),
        "delivered_once": sum(1 for a in wanted if counts.get(a) == 1),
        "lost": sum(1 for a in wanted if a not in counts),
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "unexpected": sum(1 for a in counts if a not in wanted),
    }


def record(
    scenario: str,
    *,
    trials: int,
    alerts_expected: int,
    delivered_once: int,
    lost: int,
    duplicated: int,
    dead_lettered: int,
    notes: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Append one scenario's figures to the results file and return the line written."""
    line: dict[str, Any] = {
        "scenario": scenario,
        "trials": trials,
        "alerts_expected": alerts_expected,
        "delivered_once": delivered_once,
        "lost": lost,
        "duplicated": duplicated,
        "dead_lettered": dead_lettered,
        "notes": notes,
        **extra,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, ensure_ascii=False, sort_keys=False) + "\n")
    return line


def latest(lines: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last line per scenario, in order of each scenario's first appearance."""
    by_scenario: dict[str, Mapping[str, Any]] = {}
    for line in lines:
        by_scenario[str(line.get("scenario", ""))] = line  # keeps the first position
    return list(by_scenario.values())


def load(path: Path | None = None) -> list[dict[str, Any]]:
    """Every well-formed line of the results file (missing file: none)."""
    path = path or results_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict) and "scenario" in value:
            out.append(value)
    return out
