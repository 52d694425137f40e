"""Print the fault suite's results as a Markdown table: ``python -m tests.faults.report``.

Reads the results file (``ALERT_PLATFORM_FAULT_RESULTS`` or ``.alert-platform/
fault-results.jsonl``), keeps the latest line per scenario, and prints one row each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.faults.results import latest, load, results_path

HEADERS = (
    "scenario",
    "trials",
    "alerts expected",
    "delivered once",
    "lost",
    "duplicated",
    "dead-lettered",
    "notes",
)
KEYS = (
    "scenario",
    "trials",
    "alerts_expected",
    "delivered_once",
    "lost",
    "duplicated",
    "dead_lettered",
    "notes",
)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


# The plan's order (issue 6); scenarios not listed follow in the order they were recorded.
ORDER = (
    "process kills",
    "broker loss",
    "Slack outage",
    "hostile events: engine",
    "hostile events: Kafka",
    "configuration faults",
)


def _rank(line: Mapping[str, Any]) -> int:
    name = str(line.get("scenario", ""))
    return next((i for i, prefix in enumerate(ORDER) if name.startswith(prefix)), len(ORDER))


def markdown_table(lines: Sequence[Mapping[str, Any]]) -> str:
    rows = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] * len(HEADERS)) + "|"]
    for line in sorted(latest(lines), key=_rank):
        rows.append("| " + " | ".join(_cell(line.get(key)) for key in KEYS) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    path = args.path or results_path()
    lines = load(path)
    if not lines:
        print(f"no fault results in {path}: run `make fault-report` first", file=sys.stderr)
        return 1
    print(markdown_table(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
