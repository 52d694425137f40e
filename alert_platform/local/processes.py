"""Background processes with a pid file, a log file and a readiness probe.

A :class:`ManagedProcess` owns ``DATA_DIR/run/NAME.pid`` and ``DATA_DIR/logs/NAME.log``. The pid
file is the only state, so a process started by ``alert-platform stack up`` can be inspected and
stopped by a later, separate ``alert-platform stack status`` / ``stack down``.

Each process runs in its own session (and so its own process group): stopping signals the whole
group, so helpers a server forks go down with it, and a Ctrl-C in the terminal that started the
stack does not kill it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alert_platform.local.ports import LOCALHOST, can_connect, port_is_free

State = Literal["running", "stale", "stopped"]
Probe = Callable[[], bool]

_LOG_TAIL_LINES = 25


class ServiceStartError(RuntimeError):
    """A service could not be started; the message names the service, the port and the cause."""

    def __init__(self, name: str, message: str, *, port: int | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.port = port


class PortInUseError(ServiceStartError):
    """The service's port is already bound by another process."""


@dataclass(frozen=True)
class ServiceStatus:
    """What a pid file says about one service.

    ``running``: the recorded process is alive. ``stale``: a pid file exists but its process is
    gone (crashed, killed, machine rebooted). ``stopped``: no pid file.
    """

    name: str
    state: State
    pid: int | None = None
    port: int | None = None
    url: str | None = None
    log_path: Path | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def tcp_probe(port: int, host: str = LOCALHOST) -> Probe:
    """Ready when ``host:port`` accepts a TCP connection."""
    return lambda: can_connect(port, host)


def http_probe(url: str, *, timeout: float = 1.0) -> Probe:
    """Ready when ``GET url`` answers 2xx."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= response.status < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return probe


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), to tell our process from a recycled pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel about the whole group
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _set_parent_death_signal() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux; no-op elsewhere).

    Used for test stacks, so a test run killed with SIGKILL leaves no servers behind. Only
    applied when spawning from the main thread (see ``ManagedProcess._tie_to_parent``).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


class ManagedProcess:
    """One server process: start in the background, probe until ready, stop, report status."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        data_dir: Path,
        port: int | None = None,
        probe: Probe | None = None,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        port_hint: str = "",
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.probe = probe if probe is not None else (tcp_probe(port) if port else None)
        self.url = url
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port_hint = port_hint
        self.die_with_parent = die_with_parent
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "run" / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.log"

    # -- pid file ------------------------------------------------------------------------------

    def _read_pid_file(self) -> dict[str, object] | None:
        try:
            raw = self.pid_path.read_text()
        except OSError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:  # a bare pid written by hand or an older version
            record = {"pid": int(raw.strip())} if raw.strip().isdigit() else None
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None

    def _write_pid_file(self, pid: int) -> None:
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": pid,
            "pgid": pid,
            "port": self.port,
            "url": self.url,
            "start_time": _start_time(pid),
            "command": self.command,
        }
        tmp = self.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.pid_path)

    def _recorded_alive(self, record: Mapping[str, object]) -> bool:
        pid = int(record["pid"])  # type: ignore[call-overload]
        if self._popen is not None and self._popen.pid == pid and self._popen.poll() is not None:
            return False
        if not _pid_alive(pid):
            return False
        recorded_start = record.get("start_time")
        current_start = _start_time(pid)
        # A recycled pid belongs to another process: its start time differs.
        return not (recorded_start and current_start and recorded_start != current_start)

    # -- public API ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        record = self._read_pid_file()
        return int(record["pid"]) if record else None  # type: ignore[call-overload]

    def status(self) -> ServiceStatus:
        """``running`` / ``stale`` (pid file, process gone) / ``stopped`` (no pid file)."""
        record = self._read_pid_file()
        if record is None:
            return ServiceStatus(
                self.name, "stopped", port=self.port, url=self.url, log_path=self.log_path
            )
        pid = int(record["pid"])  # type: ignore[call-overload]
        state: State = "running" if self._recorded_alive(record) else "stale"
        # Where the process was started (the current settings may name another port).
        port = record.get("port", self.port)
        url = record.get("url", self.url)
        return ServiceStatus(
            self.name,
            state,
            pid=pid,
            port=port if isinstance(port, int) else self.port,
            url=url if isinstance(url, str) else self.url,
            log_path=self.log_path,
        )

    def start(self) -> ServiceStatus:
        """Start (unless already running) and wait until the readiness probe passes."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> bool:
        """Start the process without waiting; False when it was already running.

        Raises :class:`PortInUseError` when the port is taken by something that is not this
        service, and :class:`ServiceStartError` when the command cannot be executed. Two
        concurrent ``spawn`` calls for the same data dir start one process (a lock file).
        """
        with self._lock():
            return self._spawn_locked()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.pid_path.with_suffix(".lock"), "a") as handle:
            try:
                import fcntl
            except ImportError:  # not POSIX: no lock
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _spawn_locked(self) -> bool:
        status = self.status()
        if status.running:
            return False
        if status.state == "stale":
            self.pid_path.unlink(missing_ok=True)
        if self.port is not None and not port_is_free(self.port):
            hint = f" ({self.port_hint})" if self.port_hint else ""
            raise PortInUseError(
                self.name,
                f"{self.name} could not start: port {self.port} is already in use{hint}",
                port=self.port,
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.cwd is not None:
            self.cwd.mkdir(parents=True, exist_ok=True)
        env = None
        if self.env is not None:
            env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            log.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                f"{' '.join(self.command)}\n".encode()
            )
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                    cwd=self.cwd,
                    close_fds=True,
                    preexec_fn=_set_parent_death_signal if self._tie_to_parent() else None,
                )
            except OSError as exc:
                raise ServiceStartError(
                    self.name, f"{self.name} could not start: {exc}", port=self.port
                ) from exc
        self._write_pid_file(self._popen.pid)
        return True

    def wait_ready(self, timeout: float | None = None) -> ServiceStatus:
        """Poll the readiness probe until it passes; fail early if the process exits."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            status = self.status()
            if not status.running:
                code = self._popen.poll() if self._popen is not None else None
                self.pid_path.unlink(missing_ok=True)
                exit_note = f" with code {code}" if code is not None else ""
                where = f" on port {self.port}" if self.port else ""
                raise ServiceStartError(
                    self.name,
                    f"{self.name} exited during start-up{exit_note}{where}; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}",
                    port=self.port,
                )
            if self.probe is None or self.probe():
                return status
            if time.monotonic() >= deadline:
                self.stop()
                where = f" on port {self.port}" if self.port else ""
                raise ServiceStartError(
                    self.name,
                    f"{self.name} did not become ready{where} within {timeout:.0f}s; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}",
                    port=self.port,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, timeout: float | None = None) -> bool:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``; remove the pid file.

        Returns True when a running process was stopped, False when there was nothing to stop.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        record = self._read_pid_file()
        if record is None:
            return False
        was_running = self._recorded_alive(record)
        if was_running:
            pgid = int(record.get("pgid") or record["pid"])  # type: ignore[call-overload]
            self._signal_group(pgid, signal.SIGTERM)
            if not self._wait_group_gone(pgid, timeout):
                self._signal_group(pgid, signal.SIGKILL)
                if not self._wait_group_gone(pgid, 5.0):
                    raise RuntimeError(
                        f"{self.name}: process group {pgid} survived SIGKILL: "
                        f"{_group_members(pgid)}"
                    )
        self.pid_path.unlink(missing_ok=True)
        return was_running

    def _tie_to_parent(self) -> bool:
        # Linux sends the death signal when the *thread* that forked exits: only tie the child
        # to a thread that lives as long as the process.
        return self.die_with_parent and threading.current_thread() is threading.main_thread()

    # -- helpers -------------------------------------------------------------------------------

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _wait_group_gone(self, pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            self._reap()
            if not _group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
