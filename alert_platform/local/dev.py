"""`alert-platform dev`: the whole platform on the embedded local stack, stopped by Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from alert_platform.settings import DAGSTER_POSTGRES_URL_ENV, Settings

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

# Sensor -> run latency: dequeue every second with threads (see docs/local-broker.md), and runs
# of the same source topic (and so partition) never overlap (one per `alert-platform/source` tag).
# In stream mode one resident run per stream (3 locally) holds a slot for good: 12 slots leave 9
# for catch-up, backfill and scheduled runs.
_INSTANCE_YAML = """\
# Written by `alert-platform dev`; edit the template in alert_platform/local/dev.py instead.
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
    dequeue_use_threads: true
    dequeue_num_workers: 4
concurrency:
  runs:
    max_concurrent_runs: 12
    tag_concurrency_limits:
      - key: "alert-platform/source"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
sensors:
  use_threads: true
  num_workers: 4
schedules:
  use_threads: true
  num_workers: 2
telemetry:
  enabled: false
nux:
  enabled: false
"""

# Dagster reads the URL from the environment when it loads the instance: no file holds the
# password (dagster-postgres: `postgres_url` is a StringSource, so `{env: VAR}` works).
_POSTGRES_STORAGE = f"""\
storage:
  postgres:
    postgres_url:
      env: {DAGSTER_POSTGRES_URL_ENV}
"""


def dagster_instance_yaml(postgres_url: str | None = None) -> str:
    """The instance config `dev` uses: SQLite storage in DAGSTER_HOME unless a Postgres URL.

    With a URL, the file names ``$ALERT_PLATFORM_DAGSTER_POSTGRES_URL`` instead of the URL, so
    Dagster processes must see that variable (see :func:`platform_environment`).
    """
    text = _INSTANCE_YAML
    if postgres_url:
        text += _POSTGRES_STORAGE
    return text


def prepare_dagster_home(data_dir: Path, postgres_url: str | None = None) -> Path:
    """Create ``data_dir/dagster`` with its ``dagster.yaml`` (no secret in it) and return it."""
    home = (data_dir / "dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_instance_yaml(postgres_url))
    return home


def platform_environment(settings: Settings, dagster_home: Path) -> dict[str, str]:
    """Environment for Dagster processes, so that runs see the same settings as this process."""
    env = dict(os.environ)
    env.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "ALERT_PLATFORM_DATA_DIR": str(settings.data_dir.resolve()),
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "SLACK_API_URL": settings.slack_api_url,
            "ALERT_PLATFORM_KAFKA_PROFILE": settings.kafka_profile,
            "SLACK_BOT_TOKEN": settings.slack_bot_token.get_secret_value(),
            "BIGQUERY_API_ENDPOINT": settings.bigquery_api_endpoint,
            "BIGQUERY_PROJECT": settings.bigquery_project,
            "BIGQUERY_DATASET": settings.bigquery_dataset,
            "ALERT_PLATFORM_MODE": settings.mode,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("ALERT_PLATFORM_START_POLICY", "earliest")  # demo events precede Dagster
    if settings.dagster_postgres_url:  # dagster.yaml refers to it by name
        env[DAGSTER_POSTGRES_URL_ENV] = settings.dagster_postgres_url
    return env


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with code {process.returncode} before {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Dagster UI did not answer at {url} within {timeout_s:.0f}s")


def start_dagster(
    settings: Settings, dagster_home: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start `dagster dev` (webserver + daemon) for the platform's definitions."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "alert_platform.definitions",
        "-h",
        "127.0.0.1",
        "-p",
        str(settings.dagster_port),
    ]
    log = log_path.open("ab")
    return subprocess.Popen(
        command,
        env=platform_environment(settings, dagster_home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_dagster(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Ask `dagster dev` to shut down (SIGINT, as Ctrl-C would), then force its group.

    `dagster dev` may exit while its code server still waits for an in-progress run (and that
    run's worker keeps going against a stack about to stop): whatever is left of its process
    group is terminated too, so nothing outlives `alert-platform dev`.
    """
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
    _end_group(process.pid)


def _end_group(pgid: int, grace_s: float = 5.0) -> None:
    """SIGTERM what is left of process group ``pgid``, SIGKILL it after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def stream_groups_ready(settings: Settings, admin: AdminClient | None = None) -> dict[str, bool]:
    """Whether each stream's consumer group is ``Stable`` (members joined and assigned; the
    local broker lists no members in a description, so the state is what tells)."""
    from confluent_kafka import ConsumerGroupState

    from alert_platform.kafka.clients import make_admin
    from alert_platform.stream.names import all_streams, stream_group

    groups = {stream_group(settings.stream_group_prefix, s): s for s in all_streams()}
    admin = admin if admin is not None else make_admin(settings)
    ready = dict.fromkeys(groups.values(), False)
    for group, future in admin.describe_consumer_groups(list(groups), request_timeout=5).items():
        try:
            description = future.result(timeout=5)
        except Exception:  # not known yet
            continue
        ready[groups[group]] = description.state == ConsumerGroupState.STABLE
    return ready


def _wait_for_stream_workers(settings: Settings, timeout_s: float = 180.0) -> None:
    """Wait until Dagster's supervisor has every stream worker in its group, so the demo's
    events are streamed as they arrive (else the catch-up runs take them after the lag bound)."""
    print("Waiting for the stream workers (Dagster's stream_supervisor starts them)...", flush=True)
    from alert_platform.kafka.clients import make_admin

    admin = make_admin(settings)
    deadline = time.monotonic() + timeout_s
    ready: dict[str, bool] = {}
    while time.monotonic() < deadline:
        ready = stream_groups_ready(settings, admin)
        if ready and all(ready.values()):
            print(f"Stream workers up: {', '.join(ready)}.", flush=True)
            return
        time.sleep(1)
    missing = [stream for stream, up in ready.items() if not up]
    print(f"Stream workers not all up after {timeout_s:.0f} s (missing {missing}): the catch-up "
          "runs deliver their events after the lag bound.", flush=True)  # fmt: skip


def _print_banner(settings: Settings, dagster_home: Path) -> None:
    sandbox_root = settings.slack_api_url.removesuffix("/").removesuffix("/api")
    lines = [
        "",
        "alert-platform is running on the local stack:",
        f"  Dagster UI         http://127.0.0.1:{settings.dagster_port}",
        f"  Slack sandbox      {sandbox_root}/  (delivered alerts)",
        f"  Kafka              {settings.bootstrap_servers}",
        f"  BigQuery emulator  {settings.bigquery_api_endpoint}"
        f"  (project {settings.bigquery_project})",
        f"  State              {settings.data_dir.resolve()}  (DAGSTER_HOME={dagster_home})",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


def run_dev(settings: Settings, *, demo_events: int = 20, ui_timeout_s: float = 180.0) -> int:
    """Start the stack, create topics, seed demo data, run Dagster until interrupted."""
    from alert_platform.kafka.admin import create_topics
    from alert_platform.kafka.reachability import require_broker
    from alert_platform.local.bigquery_seed import seed_warehouse
    from alert_platform.local.demo import build_demo_data, produce_events, produce_lookup_tables
    from alert_platform.local.stack import LocalStack

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a process started in the background may inherit SIGINT as ignored.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    stack = LocalStack(settings)
    dagster: subprocess.Popen[bytes] | None = None
    try:
        print("Starting the local stack (Kafka, BigQuery emulator, Slack sandbox)...", flush=True)
        stack.up()
        # KAFKA_BOOTSTRAP_SERVERS may name another (non-local) broker: fail fast if it is down.
        require_broker(settings)
        created = create_topics(settings)
        print(f"Topics ready ({len(created)} created).", flush=True)
        seeded = seed_warehouse(settings)
        print(f"BigQuery warehouse seeded ({seeded} new account rows).", flush=True)
        demo = build_demo_data(demo_events)
        produce_lookup_tables(settings, demo)
        dagster_home = prepare_dagster_home(settings.data_dir, settings.dagster_postgres_url)
        print("Starting Dagster (webserver + daemon)...", flush=True)
        dagster = start_dagster(settings, dagster_home, settings.data_dir / "logs" / "dagster.log")
        wait_for_http(
            f"http://127.0.0.1:{settings.dagster_port}/server_info", ui_timeout_s, dagster
        )
        if settings.mode == "stream":
            _wait_for_stream_workers(settings)
        produced = produce_events(settings, demo.events)
        print(f"Produced {produced} demo connector events.", flush=True)
        _print_banner(settings, dagster_home)
        return dagster.wait()
    except KeyboardInterrupt:
        print("\nStopping...", flush=True)
        return 0
    finally:
        if dagster is not None:
            stop_dagster(dagster)
        stack.down()
        print("Stopped Dagster and the local stack.", flush=True)
