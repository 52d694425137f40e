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

Retention gaps: offsets below a partition's low watermark are gone. A re-launched range (or the
cursor) that starts below it is clamped to the low watermark and the lost offsets travel with
the request (``RangeRequest.lost``) to the run that reports them, so a range whose start was
deleted never fails forever and the retained records behind it are read. A range lost whole
becomes an empty request that only carries its gap.

A partition the cursor has no history of starts where ``start_offsets`` says (located by the
caller from the start policy), else at its end with ``start_at_latest``, else at its low
watermark.

The first re-launch of a failed range is immediate; later ones wait an exponential back-off of
``retry_backoff_base_s`` (``Settings.retry_backoff_base_s``, env
``ALERT_PLATFORM_RETRY_BACKOFF_BASE_S``; 15 s, doubling, at most ``RETRY_BACKOFF_MAX_S``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from alert_platform.kafka.offsets import OffsetRange

RETRY_BACKOFF_BASE_S = 15.0
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
    lost: tuple[OffsetRange, ...] = ()  # retention gaps its run must report

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "range": self.range.as_dict(),
            "run_key": self.run_key,
            "attempt": self.attempt,
            "requested_at": self.requested_at,
            "not_before": self.not_before,
        }
        if self.lost:
            data["lost"] = [gap.as_dict() for gap in self.lost]
        return data

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> PendingRange:
        return cls(
            range=OffsetRange.from_dict(raw["range"]),  # type: ignore[arg-type]
            run_key=str(raw["run_key"]),
            attempt=int(raw["attempt"]),  # type: ignore[call-overload]
            requested_at=float(raw["requested_at"]),  # type: ignore[arg-type]
            not_before=float(raw.get("not_before", 0.0)),  # type: ignore[arg-type]
            lost=tuple(OffsetRange.from_dict(g) for g in raw.get("lost", ())),  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class TailCursor:
    """Next offset per partition, the ranges whose runs are not known to have succeeded, and
    the partition ends seen at the previous tick (for ``settle_one_tick``).

    ``handover`` is the stream mode's state (:mod:`alert_platform.stream.handover`), a JSON
    object kept as is; empty in batch mode and in cursors written before stream mode."""

    next_offsets: Mapping[int, int] = field(default_factory=dict)
    pending: tuple[PendingRange, ...] = ()
    observed: Mapping[int, int] = field(default_factory=dict)
    topic_id: str = ""  # of the topic the offsets refer to; "" = not known
    handover: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        data: dict[str, object] = {
            "next": {str(p): o for p, o in sorted(self.next_offsets.items())},
            "pending": [p.to_dict() for p in self.pending],
            "observed": {str(p): o for p, o in sorted(self.observed.items())},
        }
        if self.topic_id:
            data["topic_id"] = self.topic_id
        if self.handover:
            data["handover"] = self.handover
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
            handover=dict(data.get("handover") or {}),
        )


@dataclass(frozen=True)
class RangeRequest:
    """One run to launch: the range it must read, its idempotent run key, and the offsets
    before it that retention deleted unread (the run reports them)."""

    range: OffsetRange
    run_key: str
    attempt: int
    lost: tuple[OffsetRange, ...] = ()


@dataclass(frozen=True)
class TickPlan:
    """What one sensor tick should launch, the cursor to store, anything worth logging, and
    the retention gaps found this tick (each also carried by one request)."""

    requests: tuple[RangeRequest, ...]
    cursor: TailCursor
    notes: tuple[str, ...] = ()
    gaps: tuple[OffsetRange, ...] = ()


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


def _backoff(attempt: int, base_s: float) -> float:
    return min(RETRY_BACKOFF_MAX_S, base_s * (2 ** max(0, attempt - 1)))


def clamp_to_low(rng: OffsetRange, low: int) -> tuple[OffsetRange, OffsetRange | None]:
    """``rng`` without its offsets below ``low`` (empty at ``rng.end`` when all are gone), and
    the deleted part (``None``: nothing was deleted)."""
    if rng.start >= low:
        return rng, None
    cut = min(low, rng.end)
    return (
        OffsetRange(rng.topic, rng.partition, cut, rng.end),
        OffsetRange(rng.topic, rng.partition, rng.start, cut),
    )


def _gap_note(topic: str, gap: OffsetRange, what: str) -> str:
    return (
        f"{topic}[{gap.partition}]: offsets {gap.start}..{gap.end - 1} ({gap.size}) were deleted "
        f"by retention before they were read; {what}"
    )


def initial_offset(
    end: int, low: int, start: int | None = None, start_at_latest: bool = False
) -> int:
    """Where a partition without history starts: ``start`` clamped to ``[low, end]`` when
    given, else at ``end`` with ``start_at_latest``, else at ``low``."""
    if start is not None:
        return max(low, min(end, start))
    return end if start_at_latest else low


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
    start_offsets: Mapping[int, int] | None = None,
    settle_one_tick: bool = False,
    topic_id: str = "",
    retry_backoff_base_s: float = RETRY_BACKOFF_BASE_S,
) -> TickPlan:
    """Decide the runs of one tick.

    ``ends`` are the true end offsets per partition (probed, not the raw high watermark),
    ``lows`` the low watermarks, ``run_states`` the state of every pending run key.
    ``settle_one_tick`` hands out only records that were already there at the previous tick
    (a safety-net consumer gives the primary path one tick to finish first). ``topic_id`` is
    the topic's current id (``""``: not known this tick; the cursor's is kept).
    ``start_offsets``: where a partition without history starts (clamped to its watermarks);
    partitions it lacks start at the end with ``start_at_latest``, else at the low watermark.
    """
    notes: list[str] = []
    gaps: list[OffsetRange] = []
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
            rng, gap = clamp_to_low(pending.range, lows.get(pending.range.partition, 0))
            lost = pending.lost
            if gap is None:
                key = _retry_key(pending.run_key, attempt)
            else:
                key = run_key_for(rng, attempt, topic_id)
                lost = (*lost, gap)
                gaps.append(gap)
                notes.append(_gap_note(topic, gap, f"the retry reads {rng.start}..{rng.end - 1}"))
            requests.append(RangeRequest(rng, key, attempt, lost))
            backoff = _backoff(attempt, retry_backoff_base_s)
            still_pending.append(PendingRange(rng, key, attempt, now, now + backoff, lost))
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
            start_at = (start_offsets or {}).get(partition)
            next_offsets[partition] = initial_offset(end, low, start_at, start_at_latest)
        if settle_one_tick:  # (what a recreated partition's previous tick saw is gone)
            end = min(end, 0 if partition in recreated else cursor.observed.get(partition, 0))
        start = next_offsets[partition]
        lost: tuple[OffsetRange, ...] = ()
        if start < low:
            if len(requests) >= max_runs_per_tick:
                continue  # no request can carry the gap this tick: found again next tick
            gap = OffsetRange(topic, partition, start, low)
            lost = (gap,)
            gaps.append(gap)
            notes.append(_gap_note(topic, gap, f"resuming at {low}"))
            start = low
            if start >= end:  # nothing to read behind the gap: a request that only reports it
                rng = OffsetRange(topic, partition, start, start)
                key = run_key_for(rng, 0, topic_id)
                requests.append(RangeRequest(rng, key, 0, lost))
                still_pending.append(PendingRange(rng, key, 0, now, 0.0, lost))
        while start < end and len(requests) < max_runs_per_tick:
            rng = OffsetRange(topic, partition, start, min(end, start + max_records_per_run))
            key = run_key_for(rng, 0, topic_id)
            requests.append(RangeRequest(rng, key, 0, lost))
            still_pending.append(PendingRange(rng, key, 0, now, 0.0, lost))
            lost = ()
            start = rng.end
        next_offsets[partition] = start

    for partition in recreated - set(ends):  # gone with the old topic
        next_offsets.pop(partition, None)
    cursor_out = TailCursor(
        next_offsets, tuple(still_pending), dict(ends), topic_id, cursor.handover
    )
    return TickPlan(tuple(requests), cursor_out, tuple(notes), tuple(gaps))


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
    return replace(cursor, pending=tuple(p for p in cursor.pending if p.range not in skip))
