"""Crash injection for the fault tests' child processes (not product code).

A fault test puts this directory first on a child process's ``PYTHONPATH``
(:func:`tests.faults.harness.with_fault_injection`); Python imports this module at start-up, in
that process and in every Python process it starts (Dagster's daemon, code servers, run
workers). Inert unless one of these variables is set:

``ALERT_PLATFORM_TEST_CRASH_AFTER_POST=<alert id>``
    SIGKILL the process right after ``chat.postMessage`` returned ok for that alert, before
    anything else happens to the outcome (no ``slack-responses`` record, no ledger write): the
    crash at the worst moment, which the next run must recover from Slack's history. With
    ``ALERT_PLATFORM_TEST_CRASH_MARKER=<path>`` the pid is appended to that file first.
``ALERT_PLATFORM_TEST_CRASH_BEFORE_RESPONSES_FLUSH=1``
    exit at once (``os._exit(70)``, no cleanup) after the deliveries were recorded in the ledger,
    before the delivery run writes and flushes its ``slack-responses`` records.
``ALERT_PLATFORM_TEST_CRASH_BEFORE_STREAM_COMMIT=<records>``
    SIGKILL a stream worker (every ``StreamLoop`` of the process) right after its processor
    finished the batch that brought the records it processed to that many, before the loop
    commits the batch: its effects are out (alerts flushed to ``slack-messages``, or posted and
    in the ledger), its offsets not committed. The marker file as above.

The product modules are patched when they are first imported (an import hook), so a process
that never delivers is not touched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

CRASH_AFTER_POST_ENV = "ALERT_PLATFORM_TEST_CRASH_AFTER_POST"
CRASH_BEFORE_FLUSH_ENV = "ALERT_PLATFORM_TEST_CRASH_BEFORE_RESPONSES_FLUSH"
CRASH_BEFORE_FLUSH_EXIT = 70
CRASH_BEFORE_STREAM_COMMIT_ENV = "ALERT_PLATFORM_TEST_CRASH_BEFORE_STREAM_COMMIT"
# A file the crash-after-post hook appends its pid to before it kills the process.
CRASH_MARKER_ENV = "ALERT_PLATFORM_TEST_CRASH_MARKER"


def _mark_and_kill() -> None:
    marker = os.environ.get(CRASH_MARKER_ENV)
    if marker:  # the test counts the crashes here (a run's own status may lag)
        with open(marker, "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_after_post(lane: ModuleType) -> None:
    """Wrap the lane's one ``chat.postMessage`` call (``Batch._post``)."""
    victim = os.environ[CRASH_AFTER_POST_ENV]
    post = lane.Batch._post

    def _post(self: Any, message: Any, claim: Any, channel: str) -> Any:
        call = post(self, message, claim, channel)
        if message.alert_id == victim and call.outcome.value == "ok":
            _mark_and_kill()
        return call

    lane.Batch._post = _post


def _crash_before_flush(runner: ModuleType) -> None:
    """Wrap the runner's write + flush of the run's outcomes (``_write_outcomes``), which it
    calls once the batch is over and every delivery is in the ledger."""
    write = runner._write_outcomes

    def _write_outcomes(*args: Any, **kwargs: Any) -> Any:
        os._exit(CRASH_BEFORE_FLUSH_EXIT)

    _write_outcomes.__wrapped__ = write  # type: ignore[attr-defined]
    runner._write_outcomes = _write_outcomes


class _CrashingProcessor:
    """A stream processor that SIGKILLs the process once ``threshold`` records are done."""

    def __init__(self, inner: Any, threshold: int) -> None:
        self.inner = inner
        self.threshold = threshold
        self.done = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def process(self, records: Sequence[Any]) -> int:
        outputs = self.inner.process(records)
        self.done += len(records)
        if self.done >= self.threshold:
            _mark_and_kill()
        return outputs


def _crash_before_stream_commit(loop: ModuleType) -> None:
    """Wrap the processor every ``StreamLoop`` is built with (it commits after ``process``)."""
    threshold = int(os.environ[CRASH_BEFORE_STREAM_COMMIT_ENV])
    init = loop.StreamLoop.__init__

    def __init__(self: Any, stream: str, group: str, consumer: Any, processor: Any,
                 *args: Any, **kwargs: Any) -> None:  # fmt: skip
        init(self, stream, group, consumer, _CrashingProcessor(processor, threshold),
             *args, **kwargs)  # fmt: skip

    loop.StreamLoop.__init__ = __init__


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after the named module is first executed."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self.patches = patches

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = self.patches.pop(fullname, None)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[ModuleType], None]):
        self.loader = loader
        self.patch = patch

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real one
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)


def _install() -> None:
    patches: dict[str, Callable[[ModuleType], None]] = {}
    if os.environ.get(CRASH_AFTER_POST_ENV):
        patches["alert_platform.delivery.lane"] = _crash_after_post
    if os.environ.get(CRASH_BEFORE_FLUSH_ENV):
        patches["alert_platform.delivery.runner"] = _crash_before_flush
    if os.environ.get(CRASH_BEFORE_STREAM_COMMIT_ENV):
        patches["alert_platform.stream.loop"] = _crash_before_stream_commit
    if patches:
        sys.meta_path.insert(0, _PatchOnImport(patches))


_install()
