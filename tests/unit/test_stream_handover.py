"""Stream mode's hand-over: the tail sensor launches only what the stream group left uncovered
for longer than the lag bound (pure planning: alert_platform.stream.handover + plan_tick)."""

from __future__ import annotations

import json

from alert_platform.kafka.offsets import OffsetRange
from alert_platform.kafka.tailing import PendingRange, RunState, TailCursor, plan_tick
from alert_platform.stream.handover import (
    MAX_MARKS,
    HandoverState,
    PartitionState,
    describe,
    plan_handover,
    settle,
    without_handover,
)

TOPIC = "events"
BOUND = 30.0


def tick(
    cursor: TailCursor,
    ends: dict[int, int],
    committed: dict[int, int] | None,
    *,
    now: float,
    lows: dict[int, int] | None = None,
    states: dict[str, RunState] | None = None,
    topic_id: str = "",
    max_records_per_run: int = 1_000,
    **handover_options: object,
):
    """One stream-mode tick as the sensor runs it: hand-over, plan_tick, settle."""
    lows = lows or {}
    handing = plan_handover(
        cursor, TOPIC, ends=ends, lows=lows, committed=committed, now=now, bound_s=BOUND,
        topic_id=topic_id, **handover_options,  # type: ignore[arg-type]
    )  # fmt: skip
    plan = plan_tick(
        handing.cursor,
        TOPIC,
        ends=handing.ends,
        lows=lows,
        run_states=states or {},
        now=now,
        max_records_per_run=max_records_per_run,
        max_runs_per_tick=16,
        topic_id=topic_id,
    )
    return handing, plan, settle(plan.cursor, handing, ends)


def spans(plan) -> list[tuple[int, int, int]]:
    return [(r.range.partition, r.range.start, r.range.end) for r in plan.requests]


def at(offsets: dict[int, int]) -> TailCursor:
    return TailCursor(next_offsets=offsets)


def test_a_range_the_group_committed_launches_nothing_and_the_cursor_moves_past_it() -> None:
    # The group was seen at 10 before (floor 10): it processed 10..99 since.
    state = HandoverState({0: PartitionState(committed=10, floor=10)})
    cursor = TailCursor(next_offsets={0: 10}, handover=state.to_dict())
    handing, plan, out = tick(cursor, {0: 100}, {0: 100}, now=1000.0)
    assert plan.requests == ()
    assert handing.covered == {0: 90}
    assert handing.waiting == {}
    assert out.next_offsets == {0: 100}
    assert HandoverState.from_cursor(out).partitions[0] == PartitionState(100, 10, ())


def test_partially_covered_launches_exactly_the_uncovered_tail_after_the_bound() -> None:
    state = HandoverState({0: PartitionState(committed=0, floor=0)})
    cursor = TailCursor(next_offsets={0: 0}, handover=state.to_dict())
    handing, plan, out = tick(cursor, {0: 100}, {0: 60}, now=1000.0)
    assert (plan.requests, handing.covered, handing.waiting) == ((), {0: 60}, {0: 40})
    assert out.next_offsets == {0: 60}
    # The worker is stuck at 60: within the bound nothing more, after it exactly 60..99.
    _h, plan, out = tick(out, {0: 100}, {0: 60}, now=1000.0 + BOUND)
    assert plan.requests == ()
    handing, plan, out = tick(out, {0: 100}, {0: 60}, now=1000.0 + BOUND + 0.5)
    assert spans(plan) == [(0, 60, 100)]
    assert handing.waiting == {}
    assert out.next_offsets == {0: 100}
    assert HandoverState.from_cursor(out).partitions[0].seen == ()


def test_records_arriving_later_wait_their_own_bound() -> None:
    cursor = at({0: 0})
    _h, plan, cursor = tick(cursor, {0: 10}, {}, now=1000.0)
    _h, plan, cursor = tick(cursor, {0: 25}, {}, now=1020.0)
    assert plan.requests == ()
    handing, plan, cursor = tick(cursor, {0: 25}, {}, now=1031.0)
    assert spans(plan) == [(0, 0, 10)]  # only the records seen at 1000
    assert handing.waiting == {0: 15}
    _h, plan, cursor = tick(cursor, {0: 25}, {}, now=1051.0)
    assert spans(plan) == [(0, 10, 25)]


def test_a_group_without_commits_covers_nothing_and_everything_is_caught_up_after_the_bound() -> (
    None
):
    cursor = at({0: 5, 1: 0})
    handing, plan, cursor = tick(cursor, {0: 20, 1: 7}, {}, now=1000.0)
    assert plan.requests == ()
    assert handing.covered == {}
    assert handing.waiting == {0: 15, 1: 7}
    handing, plan, cursor = tick(cursor, {0: 20, 1: 7}, {}, now=1000.0 + BOUND + 1)
    assert spans(plan) == [(0, 5, 20), (1, 0, 7)]
    assert cursor.next_offsets == {0: 20, 1: 7}


def test_a_group_first_seen_ahead_of_the_cursor_is_not_trusted_below_that_offset() -> None:
    # A new group starts at the end: records before its first commit may never have been read
    # (a switch from batch mode, a first deploy). They wait the bound and get a catch-up run.
    cursor = at({0: 10})
    handing, plan, cursor = tick(cursor, {0: 50}, {0: 40}, now=1000.0)
    assert plan.requests == ()
    assert handing.covered == {}
    assert handing.waiting == {0: 40}  # 10..39 untrusted, 40..49 beyond the commit
    handing, plan, cursor = tick(cursor, {0: 50}, {0: 50}, now=1000.0 + BOUND + 1)
    assert spans(plan) == [(0, 10, 40)]  # exactly the untrusted head, 40..49 is covered
    assert cursor.next_offsets == {0: 40}
    # Next tick the group's span from its floor covers the rest.
    handing, plan, cursor = tick(cursor, {0: 50}, {0: 50}, now=1000.0 + BOUND + 2)
    assert plan.requests == ()
    assert handing.covered == {0: 10}
    assert cursor.next_offsets == {0: 50}


def test_a_group_that_keeps_up_is_trusted_from_its_first_commit_on() -> None:
    cursor = at({0: 10})
    _h, plan, cursor = tick(cursor, {0: 10}, {0: 10}, now=1000.0)
    for step, (end, covered) in enumerate(((30, 20), (60, 30), (90, 30)), start=1):
        handing, plan, cursor = tick(cursor, {0: end}, {0: end}, now=1000.0 + 5 * step)
        assert plan.requests == ()
        assert handing.covered == {0: covered}
    assert cursor.next_offsets == {0: 90}
    assert HandoverState.from_cursor(cursor).partitions[0].floor == 10


def test_cursor_ahead_of_the_committed_offset_waits_then_catches_up_or_is_overtaken() -> None:
    # A catch-up run already read past where the lagging group is.
    state = HandoverState({0: PartitionState(committed=20, floor=0)})
    cursor = TailCursor(next_offsets={0: 50}, handover=state.to_dict())
    handing, plan, cursor = tick(cursor, {0: 60}, {0: 30}, now=1000.0)
    assert (plan.requests, handing.covered, handing.waiting) == ((), {}, {0: 10})
    assert cursor.next_offsets == {0: 50}
    # The group overtakes the cursor before the bound: covered, nothing launched.
    handing, plan, cursor = tick(cursor, {0: 60}, {0: 60}, now=1010.0)
    assert (plan.requests, handing.covered) == ((), {0: 10})
    assert cursor.next_offsets == {0: 60}


def test_a_rewound_group_is_trusted_from_the_lower_offset() -> None:
    state = HandoverState({0: PartitionState(committed=80, floor=50)})
    cursor = TailCursor(next_offsets={0: 30}, handover=state.to_dict())
    handing, _plan, cursor = tick(cursor, {0: 100}, {0: 20}, now=1000.0)
    assert HandoverState.from_cursor(cursor).partitions[0].floor == 20
    handing, plan, cursor = tick(cursor, {0: 100}, {0: 100}, now=1001.0)
    assert (plan.requests, handing.covered) == ((), {0: 70})


def test_unreadable_commits_cover_nothing_but_keep_the_state() -> None:
    state = HandoverState({0: PartitionState(committed=10, floor=10)})
    cursor = TailCursor(next_offsets={0: 10}, handover=state.to_dict())
    handing, plan, cursor = tick(cursor, {0: 40}, None, now=1000.0)
    assert (plan.requests, handing.covered, handing.waiting) == ((), {}, {0: 30})
    assert handing.notes and "cannot be read" in handing.notes[0]
    assert HandoverState.from_cursor(cursor).partitions[0].committed == 10
    # Readable again: continuity since 10 still holds, everything is covered.
    handing, plan, cursor = tick(cursor, {0: 40}, {0: 40}, now=1005.0)
    assert (plan.requests, handing.covered) == ((), {0: 30})


def test_a_commit_below_the_low_watermark_is_no_cover_and_resets_the_trust() -> None:
    state = HandoverState({0: PartitionState(committed=10, floor=0)})
    cursor = TailCursor(next_offsets={0: 40}, handover=state.to_dict())
    handing, _plan, cursor = tick(cursor, {0: 60}, {0: 5}, now=1000.0, lows={0: 20})
    assert HandoverState.from_cursor(cursor).partitions[0].committed is None
    # The worker reset to the end (60): first sight again, 40..59 is not trusted.
    handing, plan, cursor = tick(cursor, {0: 60}, {0: 60}, now=1000.0 + BOUND + 1, lows={0: 20})
    assert spans(plan) == [(0, 40, 60)]
    assert handing.covered == {}


def test_a_recreated_topic_restarts_at_the_low_watermark_launches_nothing_and_forgets() -> None:
    state = HandoverState({0: PartitionState(committed=500, floor=0, seen=((600, 990.0),))})
    pending = PendingRange(OffsetRange(TOPIC, 0, 400, 500), "k", 0, 900.0)
    cursor = TailCursor({0: 500}, (pending,), {0: 600}, "old-id", state.to_dict())
    _handing, plan, cursor = tick(cursor, {0: 700}, {0: 500}, now=1000.0, topic_id="new-id")
    assert plan.requests == ()
    assert any("topic id changed" in note for note in plan.notes)
    assert cursor.next_offsets == {0: 0}
    assert cursor.pending == ()
    assert HandoverState.from_cursor(cursor).partitions[0] == PartitionState(
        None, None, ((700, 1000.0),)
    )
    # The old group offset (500) is not trusted for the new topic: all of 0..699 is caught up.
    _h, plan, cursor = tick(cursor, {0: 700}, {0: 500}, now=1031.0, topic_id="new-id")
    assert spans(plan) == [(0, 0, 700)]


def test_a_recreated_partition_without_topic_ids_is_left_to_plan_tick() -> None:
    state = HandoverState({0: PartitionState(committed=90, floor=0)})
    cursor = TailCursor(next_offsets={0: 90}, handover=state.to_dict())
    _handing, plan, cursor = tick(cursor, {0: 12}, {}, now=1000.0, lows={0: 0})
    assert plan.requests == ()
    assert any("before the next offset" in note for note in plan.notes)
    assert cursor.next_offsets == {0: 0}
    _h, plan, cursor = tick(cursor, {0: 12}, {}, now=1031.0)
    assert spans(plan) == [(0, 0, 12)]


def test_a_pending_range_the_stream_covered_is_dropped() -> None:
    failed = PendingRange(OffsetRange(TOPIC, 0, 10, 20), "events:0:10-20", 0, 900.0)
    state = HandoverState({0: PartitionState(committed=10, floor=5)})
    cursor = TailCursor({0: 20}, (failed,), {0: 20}, "", state.to_dict())
    states = {"events:0:10-20": RunState.FAILED}
    handing, plan, cursor = tick(cursor, {0: 20}, {0: 20}, now=1000.0, states=states)
    assert handing.dropped == (failed.range,)
    assert plan.requests == ()  # no retry: the stream did it
    assert cursor.pending == ()
    # Not covered (group below its end): retried as in batch mode.
    state = HandoverState({0: PartitionState(committed=10, floor=5)})
    cursor = TailCursor({0: 20}, (failed,), {0: 20}, "", state.to_dict())
    handing, plan, cursor = tick(cursor, {0: 20}, {0: 15}, now=1000.0, states=states)
    assert handing.dropped == ()
    assert [r.run_key for r in plan.requests] == ["events:0:10-20#retry1"]


def test_due_records_are_split_like_any_range_and_the_rest_follows() -> None:
    cursor = at({0: 0})
    _h, _plan, cursor = tick(cursor, {0: 2500}, {}, now=1000.0)
    _h, plan, cursor = tick(cursor, {0: 2500}, {}, now=1031.0)
    assert spans(plan) == [(0, 0, 1000), (0, 1000, 2000), (0, 2000, 2500)]


def test_a_fresh_cursor_starts_by_the_start_policy() -> None:
    handing, plan, cursor = tick(TailCursor(), {0: 40}, {}, now=1000.0, start_at_latest=True)
    assert (plan.requests, cursor.next_offsets, handing.waiting) == ((), {0: 40}, {})
    handing, plan, cursor = tick(TailCursor(), {0: 40}, {}, now=1000.0, start_offsets={0: 25})
    assert cursor.next_offsets == {0: 25}
    assert handing.waiting == {0: 15}


def test_settle_keeps_the_true_ends_for_settle_one_tick() -> None:
    cursor = at({0: 0})
    handing, _plan, cursor = tick(cursor, {0: 10}, {}, now=1000.0)
    assert handing.ends == {0: 0}  # nothing due: plan_tick saw an end of 0
    assert cursor.observed == {0: 10}  # the cursor keeps the end that was there


def test_marks_are_bounded_and_never_make_a_record_wait_longer() -> None:
    cursor = at({0: 0})
    for step in range(MAX_MARKS * 2):
        _h, plan, cursor = tick(cursor, {0: step + 1}, {}, now=1000.0 + step * 0.1)
        assert plan.requests == ()
    seen = HandoverState.from_cursor(cursor).partitions[0].seen
    assert len(seen) == MAX_MARKS
    assert seen[0][1] == 1000.0 and seen[-1][0] == MAX_MARKS * 2
    # Just before the first record's bound: nothing; just after: the first records (merged
    # marks keep the older time: a record may go a little early, never late).
    _h, plan, _cursor = tick(cursor, {0: MAX_MARKS * 2}, {}, now=1000.0 + BOUND)
    assert plan.requests == ()
    _h, plan, _cursor = tick(cursor, {0: MAX_MARKS * 2}, {}, now=1000.0 + BOUND + 0.01)
    [(partition, start, end)] = spans(plan)
    assert (partition, start) == (0, 0) and 1 <= end <= 3
    _h, plan, _cursor = tick(cursor, {0: MAX_MARKS * 2}, {}, now=1000.0 + BOUND + 6.4)
    assert spans(plan) == [(0, 0, MAX_MARKS * 2)]


def test_cursor_json_round_trip_and_old_cursors() -> None:
    cursor = at({0: 0})
    _h, _plan, cursor = tick(cursor, {0: 10, 1: 3}, {1: 3}, now=1000.25)
    again = TailCursor.from_json(cursor.to_json())
    assert again == cursor
    assert HandoverState.from_cursor(again) == HandoverState.from_cursor(cursor)
    raw = json.loads(cursor.to_json())
    assert raw["handover"]["partitions"]["0"] == {"seen": [[10, 1000.25]]}
    # A cursor written before stream mode: no state, nothing trusted yet.
    old = TailCursor.from_json('{"next":{"0":4},"pending":[],"observed":{"0":4}}')
    assert old.handover == {} and HandoverState.from_cursor(old).partitions == {}
    assert old.next_offsets == {0: 4}
    # Batch mode drops the state: the cursor JSON is what it was before stream mode.
    assert "handover" not in without_handover(again).to_json()
    assert without_handover(old) is old


def test_describe_says_what_was_covered_launched_and_waits() -> None:
    state = HandoverState({0: PartitionState(committed=0, floor=0)})
    cursor = TailCursor(next_offsets={0: 0, 1: 0}, handover=state.to_dict())
    handing, plan, _cursor = tick(cursor, {0: 30, 1: 5}, {0: 30}, now=1000.0)
    line = describe(TOPIC, "grp", handing, [r.range for r in plan.requests])
    assert line == (
        "events: stream group grp covered 30 record(s) ([0] 30); catch-up launched: nothing; "
        "5 uncovered record(s) within the lag bound"
    )


def test_a_recorded_start_lets_the_group_cover_records_committed_before_the_sensor_looked() -> None:
    """The worker started at 0 and committed 7 before the sensor's first look: the recorded
    start, not the first commit seen, is where the group's coverage begins."""
    cursor = TailCursor(next_offsets={0: 0})
    without = plan_handover(cursor, "t", ends={0: 7}, lows={0: 0}, committed={0: 7},
                                     now=100.0, bound_s=30.0)  # fmt: skip
    assert without.covered == {}  # below the first commit seen: left to a catch-up
    with_start = plan_handover(cursor, "t", ends={0: 7}, lows={0: 0}, committed={0: 7},
                                        now=100.0, bound_s=30.0, starts={0: 0})  # fmt: skip
    assert with_start.covered == {0: 7}
    assert with_start.cursor.next_offsets[0] == 7
    # A start the group has not reached, or below the low watermark, proves nothing.
    for start in (9, -1):
        plan = plan_handover(cursor, "t", ends={0: 7}, lows={0: 0}, committed={0: 7},
                                      now=100.0, bound_s=30.0, starts={0: start})  # fmt: skip
        assert plan.covered == {}
