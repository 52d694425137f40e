"""Plan runs over exact offset ranges for a tailed topic: the brain of every tail sensor.

Pure functions over a JSON-serialisable cursor, so the planning is testable without Dagster or
Kafka. The cursor holds the next offset to hand out per partition and the ranges already handed
out whose runs have not succeeded yet; a failed run's range is handed out again (with back-off)
under a new run key until it succeeds, so no range is ever stranded by a failure.

A recreated topic (deleted and created again, or a broker with memory storage restarted) is
recognised by its topic id, which the cursor keeps, and, on brokers without topic ids, by a
partition end lying *before* the cursor's next offset. Either way the cursor's offsets refer to
records that are gone: the partition starts over at its low watermark and its pending ranges are
dropped (the tick's notes say so). Run keys carry the start of the topic id (``...@<id>``), so
the new topic's ranges never share a run key, and so a "succeeded" state, with the old topic's.
Offsets alone cannot tell a recreated topic that already holds as many records as the cursor had
read: without topic ids that case stays undetected.

The first re-launch of a failed range is immediate; later ones wait an exponential back-off of
``RETRY_BACKOFF_BASE_S`` (15 s, doubling, at most ``RETRY_BACKOFF_MAX_S``), which the environment
variable ``ALERT_PLATFORM_RETRY_BACKOFF_BASE_S`` overrides (read once, when the sensors load:
fault tests use a second or two).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.settings import ConfigError

RETRY_BACKOFF_BASE_ENV = "ALERT_PLATFORM_RETRY_BACKOFF_BASE_S"


def _backoff_base(default: float = 15.0) -> float:
    raw = os.environ.get(RETRY_BACKOFF_BASE_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise ConfigError(f"{RETRY_BACKOFF_BASE_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


RETRY_BACKOFF_BASE_S = _backoff_base()
RETRY_BACKOFF_MAX_S = 300.0
# A run key the instance does not know after this long was never launched: hand it out again.
MISSING_RUN_GRACE_S = 120.0


class RunState(Enum):
    """What the orchestrator says about a run launched for a range."""

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSING = "missing"


@dataclass(frozen=True)
class PendingRange:
    """A range handed out to a run that has not succeeded yet."""

    range: OffsetRange
    run_key: str
    attempt: int
    requested_at: float
    not_before: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "range": self.range.as_dict(),
            "run_key": self.run_key,
            "attempt": self.attempt,
            "requested_at": self.requested_at,
            "not_before": self.not_before,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> PendingRange:
        return cls(
            range=OffsetRange.from_dict(raw["range"]),  # type: ignore[arg-type]
            run_key=str(raw["run_key"]),
            attempt=int(raw["attempt"]),  # type: ignore[call-overload]
            requested_at=float(raw["requested_at"]),  # type: ignore[arg-type]
            not_before=float(raw.get("not_before", 0.0)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class TailCursor:
    """Next offset per partition, the ranges whose runs are not known to have succeeded, and
    the partition ends seen at the previous tick (for ``settle_one_tick``)."""

    next_offsets: Mapping[int, int] = field(default_factory=dict)
    pending: tuple[PendingRange, ...] = ()
    observed: Mapping[int, int] = field(default_factory=dict)
    topic_id: str = ""  # of the topic the offsets refer to; "" = not known

    def to_json(self) -> str:
        data: dict[str, object] = {
            "next": {str(p): o for p, o in sorted(self.next_offsets.items())},
            "pending": [p.to_dict() for p in self.pending],
            "observed": {str(p): o for p, o in sorted(self.observed.items())},
        }
        if self.topic_id:
            data["topic_id"] = self.topic_id
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | None) -> TailCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            next_offsets={int(p): int(o) for p, o in data.get("next", {}).items()},
            pending=tuple(PendingRange.from_dict(p) for p in data.get("pending", [])),
            observed={int(p): int(o) for p, o in data.get("observed", {}).items()},
            topic_id=str(data.get("topic_id", "")),
        )


@dataclass(frozen=True)
class RangeRequest:
    """One run to launch: the range it must read and its idempotent run key."""

    range: OffsetRange
    run_key: str
    attempt: int


@dataclass(frozen=True)
class TickPlan:
    """What one sensor tick should launch, the cursor to store, and anything worth logging."""

    requests: tuple[RangeRequest, ...]
    cursor: TailCursor
    notes: tuple[str, ...] = ()


# Characters of the topic id a run key carries: 48 bits, plenty to tell incarnations apart.
TOPIC_ID_IN_KEY = 8


def run_key_for(rng: OffsetRange, attempt: int = 0, topic_id: str = "") -> str:
    """``topic:partition:start-end``, then ``@`` and the start of the topic id when known, then
    ``#retryN`` for the N-th re-launch."""
    base = f"{rng.topic}:{rng.partition}:{rng.start}-{rng.end}"
    if topic_id:
        base += f"@{topic_id[:TOPIC_ID_IN_KEY]}"
    return base if attempt == 0 else f"{base}#retry{attempt}"


def _retry_key(run_key: str, attempt: int) -> str:
    return f"{run_key.split('#retry', 1)[0]}#retry{attempt}"


def _backoff(attempt: int) -> float:
    return min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S * (2 ** max(0, attempt - 1)))


def plan_tick(
    cursor: TailCursor,
    topic: str,
    *,
    ends: Mapping[int, int],
    lows: Mapping[int, int],
    run_states: Mapping[str, RunState],
    now: float,
    max_records_per_run: int,
    max_runs_per_tick: int,
    start_at_latest: bool = False,
    settle_one_tick: bool = False,
    topic_id: str = "",
) -> TickPlan:
    """Decide the runs of one tick.

    ``ends`` are the true end offsets per partition (probed, not the raw high watermark),
    ``lows`` the low watermarks, ``run_states`` the state of every pending run key.
    ``settle_one_tick`` hands out only records that were already there at the previous tick
    (a safety-net consumer gives the primary path one tick to finish first). ``topic_id`` is
    the topic's current id (``""``: not known this tick; the cursor's is kept).
    """
    notes: list[str] = []
    requests: list[RangeRequest] = []
    still_pending: list[PendingRange] = []

    # A new topic id, or an end before the next offset: the partition was recreated and what
    # the cursor points at is gone. Start it over at its low watermark; its pending ranges are
    # void.
    new_id = bool(topic_id and cursor.topic_id and topic_id != cursor.topic_id)
    if new_id:
        recreated = set(ends) | set(cursor.next_offsets)
    else:
        recreated = {
            partition
            for partition, end in ends.items()
            if cursor.next_offsets.get(partition, 0) > end
        }
    for partition in sorted(recreated & set(ends)):
        dropped = sum(1 for p in cursor.pending if p.range.partition == partition)
        if new_id:
            why = f"the topic id changed from {cursor.topic_id} to {topic_id}"
        else:
            why = (
                f"the partition ends at {ends[partition]}, before the next offset to read "
                f"({cursor.next_offsets[partition]})"
            )
        notes.append(
            f"{topic}[{partition}]: {why}: the topic was recreated or the broker lost its data; "
            f"resuming at the low watermark {lows.get(partition, 0)} and dropping {dropped} "
            "pending range(s) of the old partition"
        )
    topic_id = topic_id or cursor.topic_id

    for pending in cursor.pending:
        if pending.range.partition in recreated:
            continue
        state = run_states.get(pending.run_key, RunState.MISSING)
        if state is RunState.SUCCEEDED:
            continue
        stuck = state is RunState.MISSING and now - pending.requested_at > MISSING_RUN_GRACE_S
        retry_due = now >= pending.not_before and len(requests) < max_runs_per_tick
        if (state is RunState.FAILED or stuck) and retry_due:
            # The next retry, should this one fail too, waits out an exponential back-off.
            attempt = pending.attempt + 1
            key = _retry_key(pending.run_key, attempt)
            requests.append(RangeRequest(pending.range, key, attempt))
            still_pending.append(
                PendingRange(pending.range, key, attempt, now, now + _backoff(attempt))
            )
            notes.append(f"re-launching {pending.run_key} as {key} (run {state.value})")
            continue
        still_pending.append(pending)

    next_offsets = dict(cursor.next_offsets)
    for partition in sorted(ends):
        end = ends[partition]
        low = lows.get(partition, 0)
        if partition in recreated:
            next_offsets[partition] = low
        elif partition not in next_offsets:
            next_offsets[partition] = end if start_at_latest else low
        if settle_one_tick:  # (what a recreated partition's previous tick saw is gone)
            end = min(end, 0 if partition in recreated else cursor.observed.get(partition, 0))
        start = next_offsets[partition]
        if start < low:
            notes.append(
                f"{topic}[{partition}]: offsets {start}..{low - 1} were deleted by retention "
                f"before they were read; resuming at {low}"
            )
            start = low
        while start < end and len(requests) < max_runs_per_tick:
            rng = OffsetRange(topic, partition, start, min(end, start + max_records_per_run))
            key = run_key_for(rng, 0, topic_id)
            requests.append(RangeRequest(rng, key, 0))
            still_pending.append(PendingRange(rng, key, 0, now))
            start = rng.end
        next_offsets[partition] = start

    for partition in recreated - set(ends):  # gone with the old topic
        next_offsets.pop(partition, None)
    cursor_out = TailCursor(next_offsets, tuple(still_pending), dict(ends), topic_id)
    return TickPlan(tuple(requests), cursor_out, tuple(notes))


def group_into_runs(requests: Sequence[RangeRequest]) -> list[list[RangeRequest]]:
    """Pack ranges into as few runs as possible with at most one range per partition each.

    One run per tick per topic keeps the number of run processes (and their start-up cost)
    independent of the partition count; order within a partition is kept.
    """
    runs: list[list[RangeRequest]] = []
    for request in requests:
        for run in runs:
            if all(other.range.partition != request.range.partition for other in run):
                run.append(request)
                break
        else:
            runs.append([request])
    return runs


def group_run_key(topic: str, requests: Sequence[RangeRequest]) -> str:
    """``topic:p:start-end[#retryN],...``: unique per set of ranges and attempts."""
    parts = sorted(request.run_key.removeprefix(f"{topic}:") for request in requests)
    return f"{topic}:{','.join(parts)}"


def drop_ranges(cursor: TailCursor, done: Iterable[OffsetRange]) -> TailCursor:
    """``cursor`` without the pending entries of ``done`` (handled without a run)."""
    skip = set(done)
    pending = tuple(p for p in cursor.pending if p.range not in skip)
    return TailCursor(cursor.next_offsets, pending, cursor.observed, cursor.topic_id)
