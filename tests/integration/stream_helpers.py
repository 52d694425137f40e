"""Stream workers in threads of the test process, against a flow test's broker and sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from alert_platform.settings import Settings
from alert_platform.stream.loop import LoopStats
from alert_platform.stream.worker import StreamWorker, build_worker

# Fast group joins on the local broker (docs: session 2 s -> ~1 s join).
TEST_GROUP = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


@dataclass
class RunningWorker:
    """A worker thread and its stop switch."""

    worker: StreamWorker
    stop: threading.Event
    thread: threading.Thread
    stats: list[LoopStats] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def halt(self, timeout: float = 20.0) -> float:
        """Stop (drain) and join; the seconds it took."""
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.worker.stream} did not drain in {timeout} s"
        return time.monotonic() - started


def start_worker(settings: Settings, stream: str, **kwargs: object) -> RunningWorker:
    """A worker of ``stream`` running in a thread, assigned partitions before it returns."""
    worker = build_worker(settings, stream, **{**TEST_GROUP, **kwargs})  # type: ignore[arg-type]
    stop = threading.Event()
    running = RunningWorker(worker, stop, threading.Thread(target=lambda: None))

    def run() -> None:
        try:
            running.stats.append(worker.run(stop))
        except BaseException as exc:
            running.errors.append(exc)

    running.thread = threading.Thread(target=run, name=f"test-stream-{stream}", daemon=True)
    running.thread.start()
    assert worker.loop.wait_assigned(30), f"{stream}: no partitions assigned in 30 s"
    return running


@contextmanager
def workers(settings: Settings, *streams: str) -> Iterator[list[RunningWorker]]:
    """Workers of ``streams``, drained on exit."""
    running: list[RunningWorker] = []
    try:
        for stream in streams:
            running.append(start_worker(settings, stream))
        yield running
    finally:
        for item in running:
            if item.thread.is_alive():
                item.halt()
        for item in running:
            assert item.errors == [], item.errors


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
