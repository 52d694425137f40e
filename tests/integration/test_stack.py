"""The embedded local stack: start, status, stop (no process left), clear errors, CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alert_platform.kafka.clients import make_admin
from alert_platform.local.ports import LOCALHOST, find_free_port
from alert_platform.local.processes import (
    ManagedProcess,
    PortInUseError,
    ServiceStartError,
    _group_members,
    _pid_alive,
    http_probe,
)
from alert_platform.local.stack import SERVICES, LocalStack, StackError, free_port_settings
from alert_platform.settings import Settings

pytestmark = pytest.mark.integration


def _http_ok(url: str) -> bool:
    return http_probe(url)()


# -- the session stack ------------------------------------------------------------------------


def test_session_stack_runs_every_service(local_stack: LocalStack, settings: Settings) -> None:
    statuses = local_stack.status()
    assert set(statuses) == set(SERVICES)
    for name, status in statuses.items():
        assert status.state == "running", name
        assert status.pid is not None and _pid_alive(status.pid), name
        assert (settings.data_dir / "run" / f"{name}.pid").is_file()
        assert (settings.data_dir / "logs" / f"{name}.log").is_file()

    metadata = make_admin(settings).list_topics(timeout=5)
    assert metadata.brokers
    assert _http_ok(f"http://{LOCALHOST}:{settings.slack_sandbox_port}/_sandbox/health")
    endpoint = settings.bigquery_api_endpoint
    assert _http_ok(f"{endpoint}/bigquery/v2/projects/{settings.bigquery_project}/datasets")


def test_services_listen_on_loopback_only(local_stack: LocalStack, settings: Settings) -> None:
    """No server is reachable on a non-loopback address of this machine."""
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("192.0.2.1", 9))  # TEST-NET: picks the outbound interface, sends nothing
        external = probe.getsockname()[0]
        probe.close()
    except OSError:
        pytest.skip("no non-loopback interface")
    if external.startswith("127."):
        pytest.skip("no non-loopback interface")
    for port in (settings.kafka_port, settings.bigquery_port, settings.slack_sandbox_port):
        with socket.socket() as sock:
            sock.settimeout(0.5)
            assert sock.connect_ex((external, port)) != 0, f"port {port} open on {external}"


def test_up_is_idempotent(local_stack: LocalStack) -> None:
    before = {name: status.pid for name, status in local_stack.status().items()}
    after = {name: status.pid for name, status in local_stack.up().items()}
    assert after == before


def test_status_from_a_fresh_instance_reads_pid_files(local_stack: LocalStack) -> None:
    other = LocalStack(local_stack.settings)
    assert {n: s.pid for n, s in other.status().items()} == {
        n: s.pid for n, s in local_stack.status().items()
    }


# -- a private stack: start and stop ------------------------------------------------------------


def test_down_stops_every_process(tmp_path: Path) -> None:
    stack = LocalStack(free_port_settings(tmp_path / "data"), die_with_parent=True)
    try:
        statuses = stack.up()
        pids = {name: status.pid for name, status in statuses.items()}
        assert all(pid and _pid_alive(pid) for pid in pids.values()), pids
        # Each service runs in its own process group (its children go down with it).
        groups = {name: os.getpgid(pid) for name, pid in pids.items() if pid}
        assert groups == pids
    finally:
        stopped = stack.down()
    assert stopped == {"kafka": True, "bigquery": True, "slack": True}
    for name, pid in pids.items():
        assert pid is not None
        assert not _pid_alive(pid), f"{name} pid {pid} still alive"
        assert _group_members(pid) == [], f"{name} group {pid} still has processes"
        assert not (tmp_path / "data" / "run" / f"{name}.pid").exists()
    assert all(status.state == "stopped" for status in stack.status().values())
    assert stack.down() == {"kafka": False, "bigquery": False, "slack": False}


def test_taken_port_gives_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((LOCALHOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = free_port_settings(tmp_path).with_overrides(
            kafka={"bootstrap.servers": f"{LOCALHOST}:{port}"}
        )
        stack = LocalStack(settings)
        with pytest.raises(StackError) as info:
            stack.up(["kafka"])
    assert str(info.value) == (
        f"Kafka broker could not start: port {port} is already in use "
        "(set KAFKA_BOOTSTRAP_SERVERS to another port)"
    )
    assert stack.status()["kafka"].state == "stopped"


def test_failed_service_stops_the_ones_started_with_it(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind((LOCALHOST, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = free_port_settings(tmp_path).with_overrides(
            slack_api_url=f"http://{LOCALHOST}:{port}/api/"
        )
        stack = LocalStack(settings)
        with pytest.raises(StackError, match=f"Slack sandbox could not start: port {port}"):
            stack.up(["kafka", "slack"])
    assert stack.status()["kafka"].state == "stopped"


def test_remote_endpoint_is_refused(tmp_path: Path) -> None:
    settings = free_port_settings(tmp_path).with_overrides(
        kafka={"bootstrap.servers": "pkc-123.confluent.cloud:9092"}
    )
    stack = LocalStack(settings)
    with pytest.raises(StackError, match="KAFKA_BOOTSTRAP_SERVERS points at 'pkc-123"):
        stack.up(["kafka"])
    # By default only the services pointed at this machine are managed.
    assert stack.local_services() == ["bigquery", "slack"]
    real_bigquery = LocalStack(settings.with_overrides(bigquery_api_endpoint=""))
    assert real_bigquery.local_services() == ["slack"]
    with pytest.raises(StackError, match="BIGQUERY_API_ENDPOINT is empty"):
        real_bigquery.up(["bigquery"])


# -- ManagedProcess -----------------------------------------------------------------------------


def _sleeper(tmp_path: Path, name: str = "sleeper", **kwargs: object) -> ManagedProcess:
    port = find_free_port()
    server = f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(60)"  # noqa: E501
    return ManagedProcess(
        name,
        [sys.executable, "-c", server],
        data_dir=tmp_path,
        port=port,
        die_with_parent=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_early_exit_reports_the_log_tail(tmp_path: Path) -> None:
    process = ManagedProcess(
        "doomed",
        [sys.executable, "-c", "import sys; print('boom: bad flag', flush=True); sys.exit(3)"],
        data_dir=tmp_path,
        port=find_free_port(),
        probe=lambda: False,
        start_timeout=20,
    )
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as info:
        process.start()
    assert time.monotonic() - started < 10  # failed as soon as it exited, not at the timeout
    message = str(info.value)
    assert "doomed exited during start-up with code 3" in message
    assert f"port {process.port}" in message
    assert "boom: bad flag" in message
    assert process.status().state == "stopped"


def test_readiness_timeout_stops_the_process(tmp_path: Path) -> None:
    process = _sleeper(tmp_path, probe=lambda: False, start_timeout=0.5)
    with pytest.raises(ServiceStartError, match="did not become ready"):
        process.start()
    assert process.status().state == "stopped"


def test_stop_from_another_instance_and_stale_pid(tmp_path: Path) -> None:
    first = _sleeper(tmp_path)
    status = first.start()
    assert status.running and status.pid
    # A second instance (as a separate `stack down` would build) sees and stops it.
    second = ManagedProcess("sleeper", first.command, data_dir=tmp_path, port=first.port)
    assert second.status().state == "running"
    with pytest.raises(PortInUseError):
        ManagedProcess("other", ["true"], data_dir=tmp_path, port=first.port).start()
    assert second.stop() is True
    assert not _pid_alive(status.pid)
    assert second.status().state == "stopped"

    # A pid file left by a process that died is reported as stale and replaced on start.
    third = _sleeper(tmp_path, name="crashy")
    pid = third.start().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while third.status().state != "stale" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert third.status().state == "stale"
    assert third.start().running
    assert third.stop() is True


def test_concurrent_spawns_start_one_process(tmp_path: Path) -> None:
    first = _sleeper(tmp_path)
    others = [
        ManagedProcess("sleeper", first.command, data_dir=tmp_path, port=first.port)
        for _ in range(3)
    ]
    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(lambda p: p.spawn(), [first, *others]))
    try:
        assert started.count(True) == 1
        assert first.wait_ready().running
    finally:
        first.stop()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    port = find_free_port()
    stubborn = (
        "import signal,socket,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(60)"
    )
    process = ManagedProcess(
        "stubborn", [sys.executable, "-c", stubborn], data_dir=tmp_path, port=port
    )
    pid = process.start().pid
    assert pid is not None
    started = time.monotonic()
    assert process.stop(timeout=0.5) is True
    assert 0.5 <= time.monotonic() - started < 5
    assert not _pid_alive(pid)


def test_test_stacks_die_with_their_parent(tmp_path: Path) -> None:
    """A test run killed with SIGKILL leaves no servers behind (die_with_parent)."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from alert_platform.local.stack import LocalStack, free_port_settings\n"
        "stack = LocalStack(free_port_settings(Path(sys.argv[1])), die_with_parent=True)\n"
        "print(stack.up(['kafka'])['kafka'].pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _pid_alive(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(pid) == []
    assert LocalStack(free_port_settings(tmp_path)).status()["kafka"].state == "stale"


# -- the CLI ----------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alert_platform.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        SLACK_API_URL=settings.slack_api_url,
        BIGQUERY_API_ENDPOINT=settings.bigquery_api_endpoint,
        BIGQUERY_PROJECT=settings.bigquery_project,
        ALERT_PLATFORM_DATA_DIR="/nonexistent-should-be-overridden",
    )
    return env


def test_cli_stack_up_status_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "cli-data"
    settings = free_port_settings(data_dir)
    env = _cli_env(settings)
    dd = ["--data-dir", str(data_dir)]
    try:
        up = _cli("stack", "up", *dd, env=env)
        assert up.returncode == 0, up.stderr
        assert f"kafka     running  {LOCALHOST}:{settings.kafka_port}" in up.stdout
        assert settings.bigquery_api_endpoint in up.stdout
        assert settings.slack_api_url in up.stdout

        status = _cli("stack", "status", *dd, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("running") == 3
        pids = [int(f.read_text().split('"pid": ')[1].split(",")[0]) for f in
                (data_dir / "run").glob("*.pid")]  # fmt: skip
        assert len(pids) == 3 and all(_pid_alive(pid) for pid in pids)

        # The CLI process has exited; the services it started still answer.
        assert make_admin(settings).list_topics(timeout=5).brokers

        topics = _cli("topics", "create", *dd, env=env)
        assert topics.returncode == 0, topics.stderr
        assert "data-slack-users" in topics.stdout and "created" in topics.stdout
        again = _cli("topics", "create", *dd, env=env)
        assert again.returncode == 0 and "created" not in again.stdout

        # The same ports from another data dir: a clear error and a non-zero exit code.
        clash = _cli("stack", "up", "--data-dir", str(tmp_path / "other"), "--services",
                     "kafka", env=env)  # fmt: skip
        assert clash.returncode == 1
        assert (
            f"Kafka broker could not start: port {settings.kafka_port} is already in use "
            "(set KAFKA_BOOTSTRAP_SERVERS to another port)"
        ) in clash.stderr
    finally:
        down = _cli("stack", "down", *dd, env=env)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped") == 3
    assert not any(_pid_alive(pid) for pid in pids)
    after = _cli("stack", "status", *dd, env=env)
    assert after.returncode == 3
    assert after.stdout.count("stopped") == 3


def test_cli_help_for_every_command() -> None:
    for args in (
        [],
        ["stack"],
        ["stack", "up"],
        ["stack", "down"],
        ["stack", "status"],
        ["topics"],
        ["topics", "create"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "alert_platform.cli", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: alert-platform" in result.stdout


def test_cli_topics_without_broker_fails_clearly(tmp_path: Path) -> None:
    env = _cli_env(free_port_settings(tmp_path))
    result = _cli("topics", "create", env=env)
    assert result.returncode == 1
    assert "is not reachable" in result.stderr
    assert "alert-platform stack up" in result.stderr


def test_sandbox_seed_users_answer(settings: Settings) -> None:
    """The sandbox was started with the token from Settings (auth.test accepts it)."""
    request = urllib.request.Request(
        settings.slack_api_url + "auth.test",
        data=b"",
        headers={"Authorization": f"Bearer {settings.slack_bot_token.get_secret_value()}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    assert body["ok"] is True, body
