"""Lookup-table load time and peak RSS, by ``bench/bench_tables.py``'s own children.

    .venv/bin/python -m bench.suite.table_loads 100000,1000000

Run from a small process of its own: a child's ``ru_maxrss`` starts at its parent's high-water
mark (the child is forked from it before it execs), so children of the suite process, which
holds the workload, would report the suite's memory instead of their own. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench import bench_tables

TABLES = ("csdr_assignments", "slack_users")


def main(sizes: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        for table in TABLES:
            for size in sizes:
                path = Path(tmp) / f"{table}-{size}.parquet"
                saved = bench_tables._run_child("save", table, size, path)
                loaded = bench_tables._run_child("load", table, size, path)
                path.unlink()
                rows.append({"table": table, "rows": size, **saved, **loaded})
    return rows


if __name__ == "__main__":
    print(json.dumps(main([int(s) for s in sys.argv[1].split(",")])), flush=True)
