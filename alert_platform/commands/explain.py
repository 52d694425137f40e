"""``alert-platform explain``: the lineage of an alert, or of a source event.

The work is done by :mod:`alert_platform.explain` (no Dagster). When a Dagster instance is
found (``--dagster-home``, $DAGSTER_HOME, or ``<data dir>/dagster`` of ``make dev``), the run
ids it names are looked up there too (job, status, partition); Dagster is imported lazily.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alert_platform.commands.common import CommandError, add_data_dir_argument, load_settings


def _run_ids(payload: dict[str, Any]) -> set[str]:
    ids: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("run_id", "owner") and isinstance(item, str) and item:
                    ids.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(payload)
    return ids


def dagster_runs(home: Path | None, run_ids: set[str]) -> dict[str, dict[str, Any]]:
    """``run id -> {job, status, partition, started}`` for the ids the instance knows."""
    if home is None or not run_ids or not (home / "dagster.yaml").is_file():
        return {}
    try:
        from dagster import DagsterInstance

        found: dict[str, dict[str, Any]] = {}
        with DagsterInstance.from_config(str(home)) as instance:
            for run_id in sorted(run_ids):
                run = instance.get_run_by_id(run_id)
                if run is None:
                    continue
                tags = run.tags
                partition = tags.get("dagster/partition") or (
                    f"{tags['dagster/asset_partition_range_start']}.."
                    f"{tags['dagster/asset_partition_range_end']}"
                    if "dagster/asset_partition_range_start" in tags
                    else None
                )
                found[run_id] = {
                    "job": run.job_name,
                    "status": run.status.value,
                    "partition": partition,
                    "backfill": tags.get("dagster/backfill"),
                }
        return found
    except Exception:  # the lineage stands without it
        return {}


def _handle(args: argparse.Namespace) -> int:
    from alert_platform.commands.backfill import resolve_dagster_home
    from alert_platform.explain import (
        Explainer,
        ExplainError,
        parse_position,
        render_alert,
        render_events,
    )

    if bool(args.alert_id) == bool(args.event):
        raise CommandError("give either an ALERT_ID or --event TOPIC:PARTITION:OFFSET")
    settings = load_settings(args)
    try:
        with Explainer(settings) as explainer:
            if args.event:
                topic, partition, offset = parse_position(args.event)
                events = explainer.explain_event(topic, partition, offset, pipeline=args.pipeline)
                payload: dict[str, Any] = {"events": [e.to_dict() for e in events]}
                text = render_events(events)
            else:
                result = explainer.explain_alert(args.alert_id, scan_limit=args.scan_limit)
                payload = result.to_dict()
                text = render_alert(result)
    except ExplainError as exc:
        raise CommandError(str(exc)) from None
    runs = (
        {}
        if args.no_dagster
        else dagster_runs(resolve_dagster_home(settings, args.dagster_home), _run_ids(payload))
    )
    if args.json:
        payload["dagster_runs"] = runs
        print(json.dumps(payload, indent=2, default=str, ensure_ascii=False))
        return 0
    print(text)
    if runs:
        print("\nDagster runs:")
        for run_id, run in runs.items():
            extra = f"  partition {run['partition']}" if run["partition"] else ""
            extra += f"  backfill {run['backfill']}" if run["backfill"] else ""
            print(f"  {run_id}  {run['job']}  {run['status']}{extra}")
    return 0


DEFAULT_SCAN_LIMIT = 100_000  # = alert_platform.explain.DEFAULT_SCAN_LIMIT (kept import-light)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="show an alert's lineage (ledger, source event, joins, runs), or a source event's",
        description=(
            "Explain ALERT_ID: its delivery-ledger rows (state, channel, ts, attempts, source, "
            "delivering run) and, for each source event, the record, what the pipeline makes "
            "of it, the lookup rows it joins and the enrichment runs that read it. Explain "
            "--event TOPIC:PARTITION:OFFSET: the same from a source record, including why it "
            "made no alert (filtered out, no assignment, dead-lettered) or where its alert "
            "went. The record is re-evaluated with the lookup tables as of NOW."
        ),
    )
    parser.add_argument("alert_id", nargs="?", metavar="ALERT_ID", help="the alert id")
    parser.add_argument(
        "--event", metavar="TOPIC:PARTITION:OFFSET", help="explain this source record instead"
    )
    parser.add_argument(
        "--pipeline", default=None, metavar="NAME", help="with --event: only this pipeline"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--scan-limit",
        type=int,
        default=DEFAULT_SCAN_LIMIT,
        metavar="N",
        help="records per slack-messages partition searched for an alert the ledger does not "
        f"know (default {DEFAULT_SCAN_LIMIT})",
    )
    parser.add_argument(
        "--dagster-home",
        type=Path,
        default=None,
        metavar="DIR",
        help="Dagster instance to look run ids up in (default $DAGSTER_HOME, else "
        "<data dir>/dagster)",
    )
    parser.add_argument(
        "--no-dagster", action="store_true", help="do not look run ids up in a Dagster instance"
    )
    add_data_dir_argument(parser)
    parser.set_defaults(handler=_handle)
