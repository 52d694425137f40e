"""The deliverer's ledger calls, grouped into few transactions on a single-writer ledger.

Each call runs in a SAVEPOINT of its group's transaction (:class:`LedgerOps`): a failing call
rolls back alone and fails for its own caller only. :func:`is_systemic` tells a failure of the
system (the database unreachable or locked) from one about a single alert.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alert_platform.delivery.ledger import DeliveryLedger

LOG = logging.getLogger("alert_platform.delivery")
# Ledger calls per transaction at most (single-writer ledgers).
MAX_GROUP = 256


def is_systemic(exc: BaseException) -> bool:
    """Whether a failure is about the system (the database unreachable or locked, a signal)
    rather than about the one message being handled: only those stop a batch."""
    if not isinstance(exc, Exception):
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


class Op:
    __slots__ = ("done", "exc", "fn", "result", "wait")

    def __init__(self, fn: Callable[[Connection | None], Any], wait: bool) -> None:
        self.fn = fn
        self.wait = wait
        self.done = threading.Event() if wait else None
        self.result: Any = None
        self.exc: BaseException | None = None


class LedgerOps:
    """The batch's ledger calls (each ``fn(conn)`` calls one ledger method with ``conn``).

    A single-writer ledger (SQLite) takes one write transaction at a time, and each costs a
    lock hand-over between the lanes' threads: here one thread runs the calls instead, as many
    per transaction as are waiting (group commit). :meth:`call` waits for the commit of its
    call (a claim or a heartbeat holds once committed, before the post); :meth:`submit` does
    not wait (recording a post that happened: until it commits the row stays 'sending' with a
    fresh heartbeat, and if the process dies first, the next run finds the post in Slack by its
    nonce, as after any crash between the post and the ledger write). Each call runs in a
    SAVEPOINT of the group's transaction: a call that fails rolls back alone and fails only for
    its caller; the others commit. A failed commit fails every call of the group. A
    :meth:`submit` failing with a systemic error (:func:`is_systemic`) stops the batch
    (``on_error``) and is raised at its end; any other is logged (the row stays 'sending'
    and the next run finds the post by its nonce). Other ledgers (PostgreSQL) run every call
    at once in the caller's thread, each in a transaction of its own.
    """

    def __init__(self, ledger: DeliveryLedger, on_error: Callable[[BaseException], None]) -> None:
        self.ledger = ledger
        self.grouped = ledger.single_writer
        self.error: BaseException | None = None
        self._on_error = on_error
        self._cond = threading.Condition()
        self._pending: deque[Op] = deque()
        self._outstanding = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[Connection | None], Any]) -> Any:
        """``fn``'s result once its transaction committed (or its exception)."""
        if not self.grouped:
            return fn(None)
        op = Op(fn, wait=True)
        self._enqueue(op)
        assert op.done is not None
        op.done.wait()
        if op.exc is not None:
            raise op.exc
        return op.result

    def submit(self, fn: Callable[[Connection | None], Any]) -> None:
        """Run ``fn`` soon; do not wait for it."""
        if not self.grouped:
            try:
                fn(None)
            except Exception as exc:
                if is_systemic(exc):
                    raise
                LOG.error("the delivery ledger failed to record a post (%s: %s); its row "
                          "stays 'sending' for the next run to find in Slack",
                          type(exc).__name__, exc)  # fmt: skip
            return
        self._enqueue(Op(fn, wait=False))

    def _enqueue(self, op: Op) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("ledger calls after the batch ended")
            self._pending.append(op)
            self._outstanding += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="slack-ledger", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                ops = [self._pending.popleft() for _ in range(min(MAX_GROUP, len(self._pending)))]
            failure: BaseException | None = None
            try:
                with self.ledger.transaction() as conn:
                    for op in ops:
                        try:
                            with self.ledger.savepoint(conn):
                                op.result = op.fn(conn)
                        except Exception as exc:  # this call alone; the group goes on
                            op.exc = exc
            except BaseException as exc:
                failure = exc
            for op in ops:
                if failure is not None:
                    op.exc = failure
                if op.done is not None:
                    op.done.set()
            unwaited = [op.exc for op in ops if not op.wait and op.exc is not None]
            for exc in unwaited:
                if not is_systemic(exc):
                    LOG.error("the delivery ledger failed to record a post (%s: %s); its row "
                              "stays 'sending' for the next run to find in Slack",
                              type(exc).__name__, exc)  # fmt: skip
                    continue
                if self.error is None:
                    self.error = exc
                LOG.error("the delivery ledger failed to record posts: %s", exc)
                self._on_error(exc)
            with self._cond:
                self._outstanding -= len(ops)
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every call so far has committed (or failed)."""
        with self._cond:
            while self._outstanding:
                self._cond.wait()

    def close(self) -> None:
        """Flush, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
