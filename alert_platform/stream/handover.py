"""The hand-over between the stream and the batch path: what a tail sensor launches in stream mode.

In stream mode resident workers consume a topic in a consumer group and commit what they
finished. A tail sensor then launches nothing for records the group's committed offsets cover
and moves its cursor past them; a record they do not cover (a worker down, lagging, or never
started) gets a batch (catch-up) run only once it has stayed uncovered for longer than the lag
bound (``Settings.stream_lag_bound_s``). :func:`plan_handover` turns the cursor, the group's
committed offsets, the probed ends and the clock into the cursor and ends that
:func:`~alert_platform.kafka.tailing.plan_tick` should see; :func:`settle` stores the state
back into the cursor (``TailCursor.handover``). Pure functions: no Kafka, no Dagster.

When does a committed offset ``C`` cover the cursor's next offset ``N``? A worker resumes at
its group's committed offset, so once the sensor has seen the group commit ``C0`` on a
partition, every later ``C >= C0`` means the group processed ``[C0, C)`` without a hole: the
*floor* of the partition is ``C0``, and ``[N, C)`` is covered when ``floor <= N < C``. Below the
floor the sensor knows nothing: a new group starts at the end (``auto.offset.reset=latest``),
so records produced before the first commit the sensor saw (a first deploy, a switch from
batch mode, a recreated topic, offsets the broker expired) may never have been read. They are
not covered and get a catch-up run after the bound; the ledger makes any repeat a no-op.
The floor drops with the committed offset when the group is rewound, and is forgotten when
the group has no commit (or one below the low watermark: deleted records, the worker will
reset to the end) or the partition was recreated. Not detected: a group deleted and
re-created, starting at the end, between two ticks.

"First seen at": for each partition the state keeps marks ``(end, t)``: the records below
``end`` (and at or after the next offset) were first seen uncovered at ``t``. A mark is added
each tick the end moves, so records that arrive later wait their own bound; at most
:data:`MAX_MARKS` are kept (the two closest in time are merged, keeping the older time: a
record may be caught up a little early, never late).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.kafka.tailing import TailCursor, initial_offset

MAX_MARKS = 32

Mark = tuple[int, float]  # (end offset, first seen uncovered at)


@dataclass(frozen=True)
class PartitionState:
    """What the sensor knows of one partition's stream coverage."""

    committed: int | None = None  # the group's committed offset seen at the last reading
    floor: int | None = None  # the group processed every offset in [floor, committed)
    seen: tuple[Mark, ...] = ()

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {}
        if self.committed is not None and self.floor is not None:
            data["committed"] = self.committed
            data["floor"] = self.floor
        if self.seen:
            data["seen"] = [[end, round(at, 3)] for end, at in self.seen]
        return data

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> PartitionState:
        committed, floor = raw.get("committed"), raw.get("floor")
        known = committed is not None and floor is not None
        seen = raw.get("seen") or ()
        return cls(
            int(committed) if known else None,  # type: ignore[call-overload]
            int(floor) if known else None,  # type: ignore[call-overload]
            tuple((int(end), float(at)) for end, at in seen),  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class HandoverState:
    """The stream mode's state of one tail cursor, per partition."""

    partitions: Mapping[int, PartitionState] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        parts = {str(p): s.to_dict() for p, s in sorted(self.partitions.items())}
        return {"partitions": {p: d for p, d in parts.items() if d}}

    @classmethod
    def from_cursor(cls, cursor: TailCursor) -> HandoverState:
        """The cursor's state; empty for a cursor without one (batch mode, older cursors)."""
        raw = cursor.handover.get("partitions") or {}
        return cls({int(p): PartitionState.from_dict(d) for p, d in raw.items()})  # type: ignore[attr-defined]


@dataclass(frozen=True)
class HandoverPlan:
    """What :func:`plan_tick` should see, and what the tick can say about the stream.

    ``cursor``: next offsets moved past what the stream covered, pending ranges the stream
    covered dropped. ``ends``: per partition the end of what is due for catch-up (uncovered
    for longer than the bound), the limit ``plan_tick`` hands out ranges up to."""

    cursor: TailCursor
    ends: dict[int, int]
    state: HandoverState
    covered: dict[int, int]  # records the stream covered this tick, per partition
    waiting: dict[int, int]  # uncovered records younger than the bound, per partition
    dropped: tuple[OffsetRange, ...] = ()  # pending ranges the stream covered
    notes: tuple[str, ...] = ()


def _trust(prev: PartitionState, committed: int | None, low: int) -> tuple[int | None, int | None]:
    """``(committed, floor)`` after reading the group's committed offset ``committed``."""
    if committed is None or committed < low:
        return None, None  # no commit, or a position retention deleted: nothing covered
    if prev.committed is None or prev.floor is None:
        return committed, committed  # first sight: nothing below it is known
    return committed, min(prev.floor, committed)  # rewound: trusted from the lower offset


def _thin(marks: list[Mark]) -> list[Mark]:
    """At most :data:`MAX_MARKS` marks: merge the two closest in time (older time kept)."""
    while len(marks) > MAX_MARKS:
        i = min(range(len(marks) - 1), key=lambda k: marks[k + 1][1] - marks[k][1])
        marks[i : i + 2] = [(marks[i + 1][0], marks[i][1])]
    return marks


def _seen(prev: tuple[Mark, ...], start: int, end: int, now: float) -> tuple[Mark, ...]:
    """Marks of the records in ``[start, end)``: earlier ones kept, new records seen now."""
    marks = [(e, t) for e, t in prev if e > start]
    top = marks[-1][0] if marks else start
    if end > top:
        marks.append((end, now))
    return tuple(_thin(marks))


def plan_handover(
    cursor: TailCursor,
    topic: str,
    *,
    ends: Mapping[int, int],
    lows: Mapping[int, int],
    committed: Mapping[int, int] | None,
    now: float,
    bound_s: float,
    topic_id: str = "",
    start_offsets: Mapping[int, int] | None = None,
    start_at_latest: bool = False,
    starts: Mapping[int, int] | None = None,
) -> HandoverPlan:
    """Plan the stream-mode part of one tick.

    ``ends``/``lows``: the probed watermarks; ``committed``: the stream group's committed
    offset per partition (absent: no commit), ``None`` when it could not be read (nothing is
    covered this tick, the state is kept). ``start_offsets``/``start_at_latest`` as for
    ``plan_tick`` (partitions without history). A recreated partition (new topic id, or an end
    before the next offset) is left to ``plan_tick`` (which restarts it at its low watermark)
    with nothing due this tick, and its state starts over. ``starts``: where the group started
    each partition, as its workers recorded (:mod:`.starts`): the group processed everything
    from there to its commit, so the floor is at most that start.
    """
    state = HandoverState.from_cursor(cursor)
    new_id = bool(topic_id and cursor.topic_id and topic_id != cursor.topic_id)
    next_offsets = dict(cursor.next_offsets)
    out_ends: dict[int, int] = {}
    parts: dict[int, PartitionState] = {}
    covered: dict[int, int] = {}
    waiting: dict[int, int] = {}
    floors: dict[int, tuple[int, int]] = {}  # partition -> trusted [floor, committed)
    notes: list[str] = []
    if committed is None:
        notes.append(f"{topic}: the stream group's committed offsets cannot be read: "
                     "nothing counts as covered this tick")  # fmt: skip
    for partition in sorted(ends):
        end, low = ends[partition], lows.get(partition, 0)
        prev = state.partitions.get(partition, PartitionState())
        if new_id or next_offsets.get(partition, -1) > end:
            out_ends[partition] = low  # plan_tick restarts it at ``low``; nothing due yet
            parts[partition] = PartitionState(seen=_seen((), low, end, now))
            continue
        if partition not in next_offsets:
            start_at = (start_offsets or {}).get(partition)
            next_offsets[partition] = initial_offset(end, low, start_at, start_at_latest)
        start = next_offsets[partition]
        trusted: tuple[int, int] | None = None  # [floor, committed): what the group processed
        if committed is None:  # unreadable this tick: keep what was known, cover nothing
            group_at, floor = prev.committed, prev.floor
        else:
            group_at, floor = _trust(prev, committed.get(partition), low)
            begun = (starts or {}).get(partition)
            known = group_at is not None and floor is not None and begun is not None
            if known and low <= begun <= group_at:  # type: ignore[operator]
                floor = min(floor, begun)  # type: ignore[type-var]
            if group_at is not None and floor is not None:
                trusted = floors[partition] = (floor, group_at)
        if trusted is not None and trusted[0] <= start < trusted[1]:
            skip_to = min(trusted[1], end)
            covered[partition] = skip_to - start
            start = next_offsets[partition] = skip_to
        # The uncovered run from ``start``: up to the floor when a non-empty trusted span lies
        # beyond it (skipped once the run up to it is handed out), else to the end.
        uncovered_end = end
        if trusted is not None and start < trusted[0] < trusted[1]:
            uncovered_end = min(trusted[0], end)
        seen = _seen(prev.seen, start, end, now)
        due = max((e for e, t in seen if now - t > bound_s), default=start)
        launch_to = max(start, min(due, uncovered_end))
        out_ends[partition] = launch_to
        left = end - launch_to
        if trusted is not None:  # minus what the group covers beyond the uncovered run
            left -= max(0, min(end, trusted[1]) - max(launch_to, trusted[0]))
        if left > 0:
            waiting[partition] = left
        parts[partition] = PartitionState(group_at, floor, seen)

    dropped: list[OffsetRange] = []
    for pending in cursor.pending:
        span = floors.get(pending.range.partition)
        if span is not None and span[0] <= pending.range.start and pending.range.end <= span[1]:
            dropped.append(pending.range)
    skip = set(dropped)
    pending = tuple(p for p in cursor.pending if p.range not in skip)
    out_cursor = replace(cursor, next_offsets=next_offsets, pending=pending)
    new_state = HandoverState(parts)
    return HandoverPlan(
        cursor=out_cursor,
        ends=out_ends,
        state=new_state,
        covered=covered,
        waiting=waiting,
        dropped=tuple(dropped),
        notes=tuple(notes),
    )


def settle(cursor: TailCursor, plan: HandoverPlan, ends: Mapping[int, int]) -> TailCursor:
    """The cursor ``plan_tick`` returned, with the true ``ends`` as the ends seen this tick
    (``plan_tick`` saw the due ends) and the hand-over state, marks below the next offsets
    dropped."""
    parts: dict[int, PartitionState] = {}
    for partition, part in plan.state.partitions.items():
        start = cursor.next_offsets.get(partition, 0)
        seen = tuple((e, t) for e, t in part.seen if e > start)
        parts[partition] = replace(part, seen=seen)
    return replace(cursor, observed=dict(ends), handover=HandoverState(parts).to_dict())


def without_handover(cursor: TailCursor) -> TailCursor:
    """``cursor`` without stream-mode state (batch mode: a later switch back starts afresh)."""
    return replace(cursor, handover={}) if cursor.handover else cursor


def describe(topic: str, group: str, plan: HandoverPlan, catch_up: list[OffsetRange]) -> str:
    """One log line: what the stream covered, what is launched as catch-up, what waits."""
    covered = sum(plan.covered.values())
    waiting = sum(plan.waiting.values())
    launched = ", ".join(str(r) for r in catch_up) or "nothing"
    by_partition = ", ".join(f"[{p}] {n}" for p, n in sorted(plan.covered.items()) if n)
    text = (
        f"{topic}: stream group {group} covered {covered} record(s)"
        + (f" ({by_partition})" if by_partition else "")
        + f"; catch-up launched: {launched}; {waiting} uncovered record(s) within the lag bound"
    )
    if plan.dropped:
        text += f"; {len(plan.dropped)} pending range(s) covered by the stream dropped"
    return text
