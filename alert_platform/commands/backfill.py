"""``alert-platform backfill``: re-derive the alerts of a time window.

Default: submit a Dagster *asset backfill* of the ``<pipeline>_alerts`` assets over the hourly
partitions covering ``[--start, --end)``, exactly what the UI's backfill dialog launches
(Assets -> ``<pipeline>_alerts`` -> Materialize -> partitions -> Launch backfill), to the
instance in DAGSTER_HOME; the daemon (``make dev`` runs one) executes it. Each backfill run has
no ``ranges`` config, so the asset re-derives its partitions' time window
(:func:`alert_platform.backfill.backfill_pipeline`).

``--local`` runs the same re-derivation in this process, without Dagster, over the exact window
given; ``--deliver`` then also posts what it produced (the delivery ledger keeps it exactly
once, whoever delivers later), alerts older than the maximum alert age included (live delivery
marks those ``stale``): the summary says how many of those it posted (``stale_posted``).

Only Dagster's public surface is used: the backfill goes through the GraphQL
``launchPartitionBackfill`` mutation (what the UI sends), executed by the ``dagster-graphql``
tool against the instance, and the partitions come from :mod:`alert_platform.alert_partitions`,
not from ``assets``. Dagster is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alert_platform.commands.common import CommandError, add_data_dir_argument, load_settings
from alert_platform.settings import Settings, process_environment

if TYPE_CHECKING:
    from dagster import HourlyPartitionsDefinition

BACKFILL_TAG = "alert-platform/backfill"
WINDOW_TAG = "alert-platform/window"
# The code location the backfill targets, loaded by dagster-graphql (never imported here).
DEFINITIONS_MODULE = "alert_platform.definitions"


def _instant(text: str) -> datetime:
    from alert_platform.backfill import parse_instant

    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def selected_pipelines(name: str) -> list[str]:
    """``all`` -> every pipeline, else the one named (``CommandError`` if unknown)."""
    from alert_platform.pipelines.registry import PIPELINES

    if name == "all":
        return list(PIPELINES)
    if name not in PIPELINES:
        raise CommandError(f"unknown pipeline {name!r}; known: all, {', '.join(PIPELINES)}")
    return [name]


def asset_names(pipelines: Sequence[str]) -> list[str]:
    return [f"{name}_{kind}" for name in pipelines for kind in ("alerts", "deliveries")]


def resolve_dagster_home(settings: Settings, explicit: Path | None) -> Path | None:
    """``--dagster-home``, else $DAGSTER_HOME, else ``<data dir>/dagster`` when `make dev`
    prepared it (it holds a dagster.yaml); ``None`` when there is none."""
    if explicit is not None:
        return explicit.resolve()
    if settings.dagster_home:
        return Path(settings.dagster_home).resolve()
    candidate = (settings.data_dir / "dagster").resolve()
    return candidate if (candidate / "dagster.yaml").is_file() else None


def alert_partitions() -> HourlyPartitionsDefinition:
    """The hourly partitions of the alert assets, built as ``assets.alerts`` builds them."""
    from dagster import HourlyPartitionsDefinition

    from alert_platform.alert_partitions import PARTITIONS_END_OFFSET, alert_partitions_start

    return HourlyPartitionsDefinition(
        start_date=alert_partitions_start(), end_offset=PARTITIONS_END_OFFSET
    )


def check_partition_keys(keys: Sequence[str]) -> None:
    """Every key must be a partition of the alert assets (from the first partition up to the
    current, still-open hour)."""
    from alert_platform.alert_partitions import alert_partitions_start

    valid = alert_partitions().get_partition_keys()
    known = set(valid)
    missing = [key for key in keys if key not in known]
    if missing:
        span = f"{valid[0]} .. {valid[-1]}" if valid else "none yet"
        raise CommandError(
            f"{len(missing)} hour(s) are not partitions of the alert assets (first partition "
            f"{alert_partitions_start()}, last = the current hour; valid now: {span}): "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )


# The UI's "Launch backfill" mutation; dagster-graphql runs it against the instance in process.
LAUNCH_BACKFILL_MUTATION = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""
# Dagster's limit on backfill titles (longer ones, or with % * ", are refused).
_TITLE_MAX = 100
_TITLE_REFUSED = frozenset('%*"')


def submit_asset_backfill(
    dagster_home: Path,
    assets: Sequence[str],
    keys: Sequence[str],
    *,
    title: str | None = None,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    timeout_s: float = 300.0,
) -> tuple[str, bool | None]:
    """Add an asset backfill of ``assets`` over ``keys`` to the instance in ``dagster_home``,
    as the UI's "Launch backfill" does (GraphQL ``launchPartitionBackfill``, executed by the
    ``dagster-graphql`` tool on the platform's definitions); ``(backfill id, backfill daemon
    healthy?)``."""
    from dagster import DagsterInstance

    if not (dagster_home / "dagster.yaml").is_file():
        raise CommandError(
            f"no Dagster instance at {dagster_home} (no dagster.yaml): start `make dev`, or "
            "set DAGSTER_HOME / --dagster-home to the instance the daemon uses"
        )
    valid_title = title and len(title) <= _TITLE_MAX and not _TITLE_REFUSED & set(title)
    params: dict[str, Any] = {
        "assetSelection": [{"path": [name]} for name in assets],
        "partitionNames": list(keys),
        "tags": [{"key": key, "value": value} for key, value in (tags or {}).items()],
        "title": title if valid_title else None,
        "description": description,
    }
    answer = _run_graphql(dagster_home, LAUNCH_BACKFILL_MUTATION, {"params": params}, timeout_s)
    result = (answer.get("data") or {}).get("launchPartitionBackfill") or {}
    if result.get("__typename") != "LaunchBackfillSuccess":
        errors = [e.get("message", "") for e in answer.get("errors") or []]
        reason = result.get("message") or "; ".join(errors) or json.dumps(answer)[:500]
        raise CommandError(f"Dagster refused the backfill: {reason}")
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        return result["backfillId"], _backfill_daemon_healthy(instance)


def _run_graphql(
    dagster_home: Path, query: str, variables: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """``dagster-graphql`` on ``alert_platform.definitions`` with DAGSTER_HOME=``dagster_home``:
    the response as a dict."""
    tool = Path(sys.executable).with_name("dagster-graphql")
    if not tool.exists():
        raise CommandError(f"dagster-graphql is not installed beside {sys.executable}")
    with tempfile.TemporaryDirectory(prefix="alert-platform-backfill-") as scratch:
        output = Path(scratch) / "response.json"
        command = [str(tool), "-m", DEFINITIONS_MODULE, "-t", query]
        command += ["-v", json.dumps(variables), "-o", str(output)]
        env = process_environment(DAGSTER_HOME=str(dagster_home))
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(f"dagster-graphql did not answer in {timeout_s:g} s") from exc
        if done.returncode != 0 or not output.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise CommandError(
                f"dagster-graphql failed (exit {done.returncode}): " + " | ".join(tail)
            )
        return json.loads(output.read_text())


def _backfill_daemon_healthy(instance: Any) -> bool | None:
    try:
        status = instance.get_daemon_statuses(["BACKFILL"]).get("BACKFILL")
    except Exception:
        return None
    return None if status is None else bool(status.healthy)


# -- the command ---------------------------------------------------------------------------------


def _handle(args: argparse.Namespace) -> int:
    start, end = args.start, args.end
    if start >= end:
        raise CommandError(f"--start {start.isoformat()} must be before --end {end.isoformat()}")
    if args.deliver and not args.local:
        raise CommandError("--deliver applies to --local only (Dagster delivers by itself)")
    settings = load_settings(args)
    pipelines = selected_pipelines(args.pipeline)
    if args.local:
        return _local(settings, pipelines, start, end, args)
    return _dagster(settings, pipelines, start, end, args)


def _dagster(
    settings: Settings,
    pipelines: list[str],
    start: datetime,
    end: datetime,
    args: argparse.Namespace,
) -> int:
    from alert_platform.backfill import hour_partition_keys

    keys = hour_partition_keys(start, end)
    check_partition_keys(keys)
    assets = asset_names(pipelines)
    home = resolve_dagster_home(settings, args.dagster_home)
    window = f"{start.isoformat()} .. {end.isoformat()}"
    summary: dict[str, Any] = {
        "assets": assets,
        "partition_keys": keys,
        "window": window,
        "dagster_home": str(home) if home else None,
    }
    if args.dry_run:
        if args.json:
            print(json.dumps({"dry_run": True, **summary}, indent=2))
            return 0
        print(f"Would launch a Dagster asset backfill of {', '.join(assets)}")
        print(f"  window {window} -> {len(keys)} hourly partition(s) (whole hours):")
        for key in keys:
            print(f"    {key}")
        print(f"  instance: {home or 'none found (set DAGSTER_HOME or start `make dev`)'}")
        return 0
    if home is None:
        raise CommandError(
            "no Dagster instance: set DAGSTER_HOME (or --dagster-home) to the instance the "
            "daemon uses (`make dev`: <data dir>/dagster), or run with --local"
        )
    tags = {BACKFILL_TAG: "cli", WINDOW_TAG: f"{keys[0]}..{keys[-1]}"}
    backfill_id, healthy = submit_asset_backfill(
        home,
        assets,
        keys,
        title=f"alert-platform backfill {keys[0]} to {keys[-1]}",
        description=f"alert-platform backfill --start {start.isoformat()} --end {end.isoformat()}",
        tags=tags,
    )
    summary.update(backfill_id=backfill_id, backfill_daemon_healthy=healthy)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"Launched Dagster backfill {backfill_id} of {', '.join(assets)}")
    print(f"  {len(keys)} hourly partition(s): {', '.join(keys)}")
    print(f"  instance: {home}")
    print(f"  watch it: http://127.0.0.1:{settings.dagster_port}/runs/b/{backfill_id}")
    if healthy is False:
        print(
            "  note: no healthy backfill daemon heartbeat on this instance; the backfill starts "
            "once the Dagster daemon runs (`make dev`), or use --local"
        )
    return 0


def _local(
    settings: Settings,
    pipelines: list[str],
    start: datetime,
    end: datetime,
    args: argparse.Namespace,
) -> int:
    from alert_platform import topics
    from alert_platform.kafka.offsets import OffsetError
    from alert_platform.run_index import RunIndex

    window = f"{start.isoformat()} .. {end.isoformat()}"
    results: list[dict[str, Any]] = []
    written = []
    run_id = f"cli-backfill-{uuid.uuid4().hex[:12]}"
    index = RunIndex(settings.effective_ledger_url)
    try:
        for name in pipelines:
            result, produced = _local_pipeline(settings, name, start, end, args, index, run_id)
            results.append(result)
            written.extend(produced)
    except OffsetError as exc:
        raise CommandError(
            f"cannot read the source topic: {exc} (is KAFKA_BOOTSTRAP_SERVERS right, and the "
            "topic created? `alert-platform topics create`)"
        ) from exc
    finally:
        index.close()
    delivery = _deliver(settings, written, run_id) if args.deliver and written else None

    if args.json:
        payload = {"window": window, "dry_run": args.dry_run, "pipelines": results}
        if delivery is not None:
            payload["delivery"] = delivery
        print(json.dumps(payload, indent=2))
        return 0
    verb = "Would re-derive" if args.dry_run else "Re-derived"
    print(f"{verb} window {window} in this process (no Dagster)")
    for result in results:
        ranges = result["source_ranges"]
        print(f"  {result['pipeline']}: located by {result['located_by']}, {len(ranges)} range(s)")
        for rng in ranges:
            print(f"    {rng}")
        if not args.dry_run:
            counts = ", ".join(
                f"{k} {result[k]}"
                for k in (
                    "read",
                    "outside_window",
                    "alerts",
                    "routed_to_fallback",
                    "filtered_out",
                    "unmatched",
                    "dead_lettered",
                )
            )
            print(f"    {counts}")
    if delivery is not None:
        print("  delivery: " + ", ".join(f"{k} {v}" for k, v in delivery.items()))
    elif not args.dry_run and written:
        print(
            f"  alerts were produced to {topics.SLACK_MESSAGES}; the delivery sensor posts them "
            "(already-delivered ones are skipped; those older than ALERT_MAX_AGE_HOURS "
            f"({settings.max_alert_age_hours:g} h) become 'stale', not posted), or re-run with "
            "--deliver to post them all"
        )
    return 0


def _local_pipeline(
    settings: Settings,
    name: str,
    start: datetime,
    end: datetime,
    args: argparse.Namespace,
    index: Any,
    run_id: str,
) -> tuple[dict[str, Any], list[Any]]:
    """One pipeline's local backfill (or, dry, its located ranges): its figures, and the
    ``slack-messages`` ranges it wrote."""
    from alert_platform import topics
    from alert_platform.backfill import backfill_pipeline, locate_window
    from alert_platform.pipelines.registry import PIPELINES

    spec = PIPELINES[name]
    if args.dry_run:
        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        ranges, method = locate_window(settings, spec.source_topic, start_ms, end_ms, index)
        located = {
            "pipeline": name,
            "located_by": method,
            "source_ranges": [str(r) for r in ranges],
        }
        return located, []
    timings: dict[str, float] = {}
    report, ranges, method = backfill_pipeline(
        settings, spec, start, end, run_id=run_id, index=index, timings=timings
    )
    result = {
        "pipeline": name,
        "located_by": method,
        "source_ranges": [str(r) for r in ranges],
        **report.counts.as_dict(),
        "outside_window": report.outside_window,
        "written_ranges": [str(r) for r in report.written],
        "elapsed_s": round(report.elapsed_s, 3),
        "locate_s": round(timings.get("locate_s", 0.0), 3),
        "tables_s": round(report.tables_s, 3),
    }
    return result, [r for r in report.written if r.topic == topics.SLACK_MESSAGES]


def _deliver(settings: Settings, ranges: list[Any], run_id: str) -> dict[str, Any]:
    from alert_platform.backfill import count_stale_posted
    from alert_platform.delivery.deliverer import DeliveryIncompleteError, SlackAuthError
    from alert_platform.delivery.runner import run_delivery
    from alert_platform.slack.client import make_web_client

    try:
        # An explicit backfill: alerts older than the maximum alert age are posted too.
        report = run_delivery(
            settings, make_web_client(settings), ranges, owner=run_id, allow_stale=True
        )
    except (SlackAuthError, DeliveryIncompleteError) as exc:
        raise CommandError(f"delivery failed: {exc}") from exc
    summary = report.delivery.summary() if report.delivery else {}
    keys = ("delivered", "already_delivered", "suppressed_repeat", "dead_lettered")
    figures: dict[str, Any] = {k: summary.get(k, 0) for k in keys}
    figures["stale_posted"] = count_stale_posted(settings, ranges, report.delivery)
    figures["records"] = report.records_read
    figures["elapsed_s"] = round(report.elapsed_s, 3)
    return figures


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="re-derive the alerts of a time window (Dagster asset backfill, or --local)",
        description=(
            "Re-derive the alerts of source events timestamped in [--start, --end) and produce "
            "them to slack-messages again; delivery skips every alert already posted, so a "
            "backfill only fills gaps. By default this submits a Dagster asset backfill of the "
            "<pipeline>_alerts assets over the hourly partitions covering the window (whole "
            "hours), to the instance in DAGSTER_HOME, as the UI's backfill dialog does; the "
            "Dagster daemon runs it. --local runs it in this process over the exact window."
        ),
    )
    add_data_dir_argument(parser)
    parser.add_argument(
        "--start",
        required=True,
        type=_instant,
        metavar="ISO",
        help="window start, ISO 8601 (UTC when no offset), e.g. 2026-11-24T20:00",
    )
    parser.add_argument(
        "--end", required=True, type=_instant, metavar="ISO", help="window end (exclusive)"
    )
    parser.add_argument(
        "--pipeline", default="all", metavar="NAME", help="a pipeline name, or all (default)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be launched; launch nothing"
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="run the backfill in this process, without Dagster, and print its counts",
    )
    parser.add_argument(
        "--deliver",
        action="store_true",
        help="with --local: also post the re-derived alerts now (exactly once, via the ledger)",
    )
    parser.add_argument(
        "--dagster-home",
        type=Path,
        default=None,
        metavar="DIR",
        help="Dagster instance directory (default $DAGSTER_HOME, else <data dir>/dagster)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_handle)
