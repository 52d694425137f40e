"""The one error a wire reader raises for a record (or a field) it cannot read."""

from __future__ import annotations


class BadRecord(Exception):
    """The record cannot be processed; ``reason`` says precisely why (it becomes the DLQ header).

    Raised by the wire codecs (:mod:`alert_platform.wire.timestamps`) and by pipeline spec
    functions (:mod:`alert_platform.pipelines.spec` re-exports it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
