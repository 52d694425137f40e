"""The tail planner hands out every offset exactly once and re-launches failed ranges."""

from __future__ import annotations

import pytest

from alert_platform.kafka.tailing import (
    MISSING_RUN_GRACE_S,
    RunState,
    TailCursor,
    drop_ranges,
    group_into_runs,
    group_run_key,
    plan_tick,
    run_key_for,
)

TOPIC = "events"


def tick(cursor: TailCursor, ends, *, states=None, now=1000.0, lows=None, **kwargs):
    options = {"max_records_per_run": 100, "max_runs_per_tick": 10, **kwargs}
    return plan_tick(
        cursor,
        TOPIC,
        ends=ends,
        lows=lows or {},
        run_states=states or {},
        now=now,
        **options,
    )


def test_first_tick_starts_at_low_watermark_and_splits_by_size() -> None:
    plan = tick(TailCursor(), {0: 250, 1: 0}, lows={0: 10})
    assert [(r.range.start, r.range.end) for r in plan.requests] == [
        (10, 110),
        (110, 210),
        (210, 250),
    ]
    assert plan.cursor.next_offsets == {0: 250, 1: 0}
    assert [p.run_key for p in plan.cursor.pending] == [r.run_key for r in plan.requests]


def test_start_at_latest_skips_history() -> None:
    plan = tick(TailCursor(), {0: 250}, start_at_latest=True)
    assert plan.requests == ()
    assert plan.cursor.next_offsets == {0: 250}


def test_no_new_data_requests_nothing_and_keeps_cursor() -> None:
    first = tick(TailCursor(), {0: 5})
    done = {r.run_key: RunState.SUCCEEDED for r in first.requests}
    second = tick(first.cursor, {0: 5}, states=done)
    assert second.requests == ()
    assert second.cursor.next_offsets == {0: 5}
    assert second.cursor.pending == ()


def test_runs_per_tick_are_bounded_and_the_rest_follows_next_tick() -> None:
    plan = tick(TailCursor(), {0: 1000}, max_runs_per_tick=3)
    assert len(plan.requests) == 3
    assert plan.cursor.next_offsets == {0: 300}
    nxt = tick(plan.cursor, {0: 1000}, max_runs_per_tick=3)
    assert nxt.requests[0].range.start == 300


def test_every_offset_is_handed_out_exactly_once_across_ticks() -> None:
    cursor = TailCursor()
    covered: list[int] = []
    for end in (0, 7, 7, 130, 131, 400):
        plan = tick(cursor, {0: end}, max_records_per_run=50, max_runs_per_tick=2)
        states = {r.run_key: RunState.SUCCEEDED for r in plan.requests}
        for r in plan.requests:
            covered.extend(range(r.range.start, r.range.end))
        cursor = tick(plan.cursor, {0: plan.cursor.next_offsets[0]}, states=states).cursor
    while cursor.next_offsets[0] < 400:
        plan = tick(cursor, {0: 400}, max_records_per_run=50, max_runs_per_tick=2)
        for r in plan.requests:
            covered.extend(range(r.range.start, r.range.end))
        cursor = plan.cursor
    assert covered == list(range(400))


def test_failed_run_is_relaunched_under_a_new_key_with_backoff() -> None:
    first = tick(TailCursor(), {0: 10})
    key = first.requests[0].run_key
    retry = tick(first.cursor, {0: 10}, states={key: RunState.FAILED}, now=1001.0)
    assert [r.run_key for r in retry.requests] == [run_key_for(first.requests[0].range, 1)]
    assert retry.requests[0].range == first.requests[0].range
    retry_key = retry.requests[0].run_key
    # The retry fails at once: the next one waits for the back-off.
    soon = tick(retry.cursor, {0: 10}, states={retry_key: RunState.FAILED}, now=1002.0)
    assert soon.requests == ()
    later = tick(retry.cursor, {0: 10}, states={retry_key: RunState.FAILED}, now=2000.0)
    assert [r.attempt for r in later.requests] == [2]


def test_running_runs_stay_pending_and_succeeded_ones_drop() -> None:
    first = tick(TailCursor(), {0: 10, 1: 10})
    k0, k1 = (r.run_key for r in first.requests)
    plan = tick(
        first.cursor, {0: 10, 1: 10}, states={k0: RunState.SUCCEEDED, k1: RunState.IN_PROGRESS}
    )
    assert plan.requests == ()
    assert [p.run_key for p in plan.cursor.pending] == [k1]


def test_missing_run_is_relaunched_only_after_grace() -> None:
    first = tick(TailCursor(), {0: 10}, now=0.0)
    assert tick(first.cursor, {0: 10}, now=MISSING_RUN_GRACE_S - 1).requests == ()
    late = tick(first.cursor, {0: 10}, now=MISSING_RUN_GRACE_S + 1)
    assert [r.attempt for r in late.requests] == [1]


def test_offsets_deleted_by_retention_are_reported() -> None:
    cursor = TailCursor(next_offsets={0: 5})
    plan = tick(cursor, {0: 50}, lows={0: 20})
    assert plan.requests[0].range.start == 20
    assert "deleted by retention" in plan.notes[0]


def test_cursor_round_trips_through_json() -> None:
    plan = tick(TailCursor(), {0: 120, 3: 7})
    again = TailCursor.from_json(plan.cursor.to_json())
    assert again == plan.cursor
    assert TailCursor.from_json(None) == TailCursor()


def test_settle_one_tick_hands_out_only_what_the_previous_tick_saw() -> None:
    first = tick(TailCursor(), {0: 10}, settle_one_tick=True)
    assert first.requests == ()
    assert first.cursor.observed == {0: 10}
    second = tick(first.cursor, {0: 25}, settle_one_tick=True)
    assert [(r.range.start, r.range.end) for r in second.requests] == [(0, 10)]
    third = tick(second.cursor, {0: 25}, settle_one_tick=True)
    assert [(r.range.start, r.range.end) for r in third.requests] == [(10, 25)]


def test_runs_hold_at_most_one_range_per_partition() -> None:
    plan = tick(TailCursor(), {0: 250, 1: 30, 2: 0}, max_records_per_run=100)
    runs = group_into_runs(plan.requests)
    assert [[(r.range.partition, r.range.start) for r in run] for run in runs] == [
        [(0, 0), (1, 0)],
        [(0, 100)],
        [(0, 200)],
    ]
    keys = {group_run_key(TOPIC, run) for run in runs}
    assert len(keys) == 3
    assert group_run_key(TOPIC, runs[0]) == f"{TOPIC}:0:0-100,1:0-30"


def test_ranges_handled_without_a_run_leave_the_pending_list() -> None:
    plan = tick(TailCursor(), {0: 10, 1: 10})
    handled = {plan.requests[0].range}
    cursor = drop_ranges(plan.cursor, handled)
    assert [p.range for p in cursor.pending] == [plan.requests[1].range]
    assert cursor.next_offsets == plan.cursor.next_offsets


def test_partition_recreated_behind_the_cursor_restarts_at_the_low_watermark() -> None:
    """A broker with memory storage restarted (or the topic was recreated): the partition now
    ends before the cursor's next offset. The sensor must neither strand the new records nor
    keep retrying the ranges of the old partition."""
    first = tick(TailCursor(), {0: 300, 1: 40}, max_records_per_run=100)
    failed = {r.run_key: RunState.FAILED for r in first.requests}
    plan = tick(first.cursor, {0: 25, 1: 40}, states=failed, now=1001.0)
    # Partition 0 starts over: one range over the new records, its old ranges are dropped.
    assert [(r.range.partition, r.range.start, r.range.end, r.attempt) for r in plan.requests] == [
        (1, 0, 40, 1),  # partition 1 still holds its range: retried as usual
        (0, 0, 25, 0),
    ]
    assert plan.cursor.next_offsets == {0: 25, 1: 40}
    assert sorted(p.range.partition for p in plan.cursor.pending) == [0, 1]
    assert len(plan.notes) == 2
    assert plan.notes[0].startswith("events[0]: the partition ends at 25, before the next")
    assert "dropping 3 pending range(s)" in plan.notes[0]
    # Once its runs succeed, the partition carries on from the new end.
    done = {p.run_key: RunState.SUCCEEDED for p in plan.cursor.pending}
    later = tick(plan.cursor, {0: 30, 1: 40}, states=done, now=1002.0)
    assert [(r.range.start, r.range.end) for r in later.requests] == [(25, 30)]
    assert later.notes == ()


def test_partition_emptied_by_a_restart_waits_for_new_records() -> None:
    first = tick(TailCursor(), {0: 50})
    plan = tick(first.cursor, {0: 0})
    assert plan.requests == ()
    assert plan.cursor.next_offsets == {0: 0}
    assert plan.cursor.pending == ()
    nxt = tick(plan.cursor, {0: 7})
    assert [(r.range.start, r.range.end) for r in nxt.requests] == [(0, 7)]


def test_retry_backoff_base_comes_from_settings() -> None:
    from alert_platform.settings import ConfigError, Settings

    assert Settings.from_env({"ALERT_PLATFORM_RETRY_BACKOFF_BASE_S": "1.5"}).retry_backoff_base_s
    assert Settings.from_env({}).retry_backoff_base_s == 15.0
    with pytest.raises(ConfigError, match="ALERT_PLATFORM_RETRY_BACKOFF_BASE_S"):
        Settings.from_env({"ALERT_PLATFORM_RETRY_BACKOFF_BASE_S": "soon"})
    # The planner waits out the base it is given: 2 s, then 4 s (not the 15 s default).
    base = {"retry_backoff_base_s": 2.0}
    first = tick(TailCursor(), {0: 10}, now=0.0)
    key = first.requests[0].run_key
    retry = tick(first.cursor, {0: 10}, states={key: RunState.FAILED}, now=1.0, **base)
    failed = {retry.requests[0].run_key: RunState.FAILED}
    assert tick(retry.cursor, {0: 10}, states=failed, now=1.0 + 1.9, **base).requests == ()
    second = tick(retry.cursor, {0: 10}, states=failed, now=1.0 + 2.1, **base)
    assert [r.attempt for r in second.requests] == [2]
    again = {second.requests[0].run_key: RunState.FAILED}
    assert tick(second.cursor, {0: 10}, states=again, now=3.1 + 3.9, **base).requests == ()
    assert tick(second.cursor, {0: 10}, states=again, now=3.1 + 4.1, **base).requests


def test_recreated_partition_also_settles_one_tick() -> None:
    first = tick(TailCursor(), {0: 50}, settle_one_tick=True)
    second = tick(first.cursor, {0: 50}, settle_one_tick=True)
    assert [(r.range.start, r.range.end) for r in second.requests] == [(0, 50)]
    done = {r.run_key: RunState.SUCCEEDED for r in second.requests}
    reset = tick(second.cursor, {0: 20}, states=done, settle_one_tick=True)
    assert reset.requests == () and reset.cursor.next_offsets == {0: 0}
    after = tick(reset.cursor, {0: 20}, settle_one_tick=True)
    assert [(r.range.start, r.range.end) for r in after.requests] == [(0, 20)]


def test_topic_id_change_restarts_a_recreated_topic_that_already_holds_as_many_records() -> None:
    """Offsets alone cannot see it: the new topic holds 50 records, the cursor had read 50.
    The topic id can, and the new ranges get run keys (and range tags) of their own, so the
    old topic's succeeded runs neither suppress them nor count for them."""
    first = tick(TailCursor(), {0: 50, 1: 10}, topic_id="OLDtopicIdAAAAAAAAAAAA")
    assert [r.run_key for r in first.requests] == [
        "events:0:0-50@OLDtopic",
        "events:1:0-10@OLDtopic",
    ]
    done = {r.run_key: RunState.SUCCEEDED for r in first.requests}
    same = tick(first.cursor, {0: 50, 1: 10}, states=done, topic_id="OLDtopicIdAAAAAAAAAAAA")
    assert same.requests == () and same.notes == ()

    plan = tick(same.cursor, {0: 50, 1: 12}, states=done, topic_id="NEWtopicIdAAAAAAAAAAAA")
    assert [(r.range.partition, r.range.start, r.range.end) for r in plan.requests] == [
        (0, 0, 50),
        (1, 0, 12),
    ]
    assert [r.run_key for r in plan.requests] == [
        "events:0:0-50@NEWtopic",
        "events:1:0-12@NEWtopic",
    ]
    assert not {r.run_key for r in plan.requests} & set(done)
    assert plan.cursor.topic_id == "NEWtopicIdAAAAAAAAAAAA"
    assert len(plan.notes) == 2
    assert "topic id changed from OLDtopicIdAAAAAAAAAAAA to NEWtopicIdAAAAAAAAAAAA" in plan.notes[0]


def test_topic_id_change_drops_pending_ranges_and_partitions_gone_with_the_old_topic() -> None:
    first = tick(TailCursor(), {0: 300, 1: 40, 2: 5}, max_records_per_run=100, topic_id="A1")
    failed = {r.run_key: RunState.FAILED for r in first.requests}
    plan = tick(first.cursor, {0: 400, 1: 40}, states=failed, topic_id="B2")
    # no re-launch of the old topic's failed ranges; the new one is read from its start
    assert [(r.range.partition, r.range.start, r.range.end, r.attempt) for r in plan.requests] == [
        (0, 0, 100, 0),
        (0, 100, 200, 0),
        (0, 200, 300, 0),
        (0, 300, 400, 0),
        (1, 0, 40, 0),
    ]
    assert plan.cursor.next_offsets == {0: 400, 1: 40}
    assert all(p.attempt == 0 for p in plan.cursor.pending)


def test_unknown_topic_id_keeps_the_cursor_s_and_its_run_keys() -> None:
    """A tick that could not learn the id (broker briefly unreachable, or no topic ids) changes
    nothing: no reset, and the id already known keeps naming the run keys."""
    first = tick(TailCursor(), {0: 5}, topic_id="A1")
    done = {r.run_key: RunState.SUCCEEDED for r in first.requests}
    plan = tick(first.cursor, {0: 9}, states=done, topic_id="")
    assert [r.run_key for r in plan.requests] == ["events:0:5-9@A1"]
    assert plan.cursor.topic_id == "A1" and plan.notes == ()
    assert TailCursor.from_json(plan.cursor.to_json()) == plan.cursor
    # a cursor from before topic ids (none stored) adopts the id without a reset
    legacy = TailCursor.from_json('{"next":{"0":5},"pending":[],"observed":{"0":5}}')
    adopted = tick(legacy, {0: 9}, topic_id="A1")
    assert [r.run_key for r in adopted.requests] == ["events:0:5-9@A1"]
    assert adopted.cursor.topic_id == "A1"


def test_retries_keep_the_topic_id_in_their_run_key() -> None:
    first = tick(TailCursor(), {0: 5}, topic_id="A1")
    failed = {r.run_key: RunState.FAILED for r in first.requests}
    retry = tick(first.cursor, {0: 5}, states=failed, now=1001.0, topic_id="A1")
    assert [r.run_key for r in retry.requests] == ["events:0:0-5@A1#retry1"]
    failed_again = {r.run_key: RunState.FAILED for r in retry.requests}
    later = tick(retry.cursor, {0: 5}, states=failed_again, now=1e9, topic_id="A1")
    assert [r.run_key for r in later.requests] == ["events:0:0-5@A1#retry2"]


# -- retention gaps -------------------------------------------------------------------------------


def test_failed_range_whose_start_was_deleted_is_clamped_and_carries_its_gap() -> None:
    first = tick(TailCursor(), {0: 100}, now=0.0)
    (request,) = first.requests
    assert (request.range.start, request.range.end) == (0, 100)
    states = {request.run_key: RunState.FAILED}
    retry = tick(first.cursor, {0: 100}, lows={0: 30}, states=states, now=1.0)
    (again,) = retry.requests
    assert (again.range.start, again.range.end) == (30, 100)
    assert [(g.start, g.end) for g in again.lost] == [(0, 30)]
    assert [(g.start, g.end) for g in retry.gaps] == [(0, 30)]
    assert again.run_key == run_key_for(again.range, 1)
    assert any("0..29 (30) were deleted by retention" in note for note in retry.notes)
    # It fails again and retention moved on: the next retry clamps further, keeping both gaps.
    failed = {again.run_key: RunState.FAILED}
    third = tick(retry.cursor, {0: 100}, lows={0: 60}, states=failed, now=10_000.0)
    (last,) = third.requests
    assert (last.range.start, last.range.end, last.attempt) == (60, 100, 2)
    assert [(g.start, g.end) for g in last.lost] == [(0, 30), (30, 60)]
    # Once it succeeds, nothing of the range is pending: no retry forever.
    done = tick(third.cursor, {0: 100}, lows={0: 60}, states={last.run_key: RunState.SUCCEEDED})
    assert done.requests == () and done.cursor.pending == ()


def test_range_deleted_whole_becomes_an_empty_request_that_reports_the_gap() -> None:
    first = tick(TailCursor(), {0: 50}, now=0.0)
    states = {first.requests[0].run_key: RunState.FAILED}
    retry = tick(first.cursor, {0: 80}, lows={0: 70}, states=states, now=1.0)
    gap_only = [r for r in retry.requests if r.range.empty]
    assert [(r.range.start, r.range.end) for r in gap_only] == [(50, 50)]
    assert [(g.start, g.end) for g in gap_only[0].lost] == [(0, 50)]
    # The cursor (at 50) is behind the low watermark too: the new range starts at 70 and
    # carries the offsets 50..69.
    new = [r for r in retry.requests if r.range.start >= 70]
    assert [(r.range.start, r.range.end) for r in new] == [(70, 80)]
    assert [(g.start, g.end) for g in new[0].lost] == [(50, 70)]
    assert sum(g.size for g in retry.gaps) == 70


def test_cursor_behind_the_low_watermark_with_nothing_left_still_reports_the_gap() -> None:
    plan = tick(TailCursor(next_offsets={0: 5}), {0: 40}, lows={0: 40})
    (request,) = plan.requests
    assert request.range.empty and request.range.start == 40
    assert [(g.start, g.end) for g in request.lost] == [(5, 40)]
    assert plan.cursor.next_offsets == {0: 40}


def test_gap_waits_for_a_tick_with_room_for_its_request() -> None:
    cursor = TailCursor(next_offsets={0: 0, 1: 5})
    plan = tick(cursor, {0: 300, 1: 50}, lows={1: 20}, max_runs_per_tick=3)
    assert all(r.range.partition == 0 for r in plan.requests)
    assert plan.cursor.next_offsets[1] == 5 and plan.gaps == ()
    later = tick(plan.cursor, {0: 300, 1: 50}, lows={1: 20}, max_runs_per_tick=3)
    (request,) = [r for r in later.requests if r.range.partition == 1]
    assert [(g.start, g.end) for g in request.lost] == [(5, 20)]


def test_pending_gaps_survive_the_cursor_json() -> None:
    first = tick(TailCursor(), {0: 100}, now=0.0)
    states = {first.requests[0].run_key: RunState.FAILED}
    retry = tick(first.cursor, {0: 100}, lows={0: 30}, states=states, now=1.0)
    again = TailCursor.from_json(retry.cursor.to_json())
    assert again == retry.cursor
    assert [(g.start, g.end) for g in again.pending[0].lost] == [(0, 30)]


def test_running_range_below_the_low_watermark_is_left_to_its_run() -> None:
    first = tick(TailCursor(), {0: 100}, now=0.0)
    key = first.requests[0].run_key
    plan = tick(first.cursor, {0: 100}, lows={0: 30}, states={key: RunState.IN_PROGRESS})
    assert plan.requests == () and plan.gaps == ()
    assert [p.run_key for p in plan.cursor.pending] == [key]


# -- start policy ---------------------------------------------------------------------------------


def test_start_offsets_place_partitions_without_history_within_their_watermarks() -> None:
    plan = tick(TailCursor(), {0: 100, 1: 100, 2: 100}, lows={1: 50}, start_offsets={0: 90, 1: 10})
    # partition 0 at the located offset, 1 clamped to its low watermark, 2 (not located) at low
    assert [(r.range.partition, r.range.start) for r in plan.requests] == [(0, 90), (1, 50), (2, 0)]
    latest = tick(TailCursor(), {0: 100, 1: 100}, start_offsets={0: 500}, start_at_latest=True)
    assert [(r.range.partition, r.range.start) for r in latest.requests] == []
    assert latest.cursor.next_offsets == {0: 100, 1: 100}


def test_start_offsets_never_move_a_partition_with_history() -> None:
    first = tick(TailCursor(), {0: 10})
    done = {r.run_key: RunState.SUCCEEDED for r in first.requests}
    plan = tick(first.cursor, {0: 20, 1: 5}, states=done, start_offsets={0: 19, 1: 3})
    assert [(r.range.partition, r.range.start, r.range.end) for r in plan.requests] == [
        (0, 10, 20),
        (1, 3, 5),
    ]


# -- the sensor's per-range work ------------------------------------------------------------


def test_a_range_whose_check_raises_gets_a_run_instead_of_failing_the_tick() -> None:
    from alert_platform.kafka.offsets import OffsetRange
    from alert_platform.settings import Settings
    from sensors.topic_tail import _handled

    warnings: list[str] = []

    class Log:
        def warning(self, text: str) -> None:
            warnings.append(text)

    class Context:
        log = Log()

    bad, good, other = (OffsetRange("slack-messages", p, 0, 5) for p in range(3))

    def needs_no_run(_settings: Settings, ranges, _topic_id: str) -> set[OffsetRange]:
        (rng,) = ranges
        if rng == bad:
            raise RecursionError("maximum recursion depth exceeded while decoding a JSON value")
        return {rng} if rng == good else set()

    handled = _handled(Context(), needs_no_run, Settings(), [bad, good, other])  # type: ignore[arg-type]
    assert handled == {good}
    assert len(warnings) == 1 and str(bad) in warnings[0] and "launching one" in warnings[0]


def test_start_policy_applies_to_a_cursor_without_history_only() -> None:
    from alert_platform.settings import Settings
    from sensors.topic_tail import locate_starts, start_lookback_s

    latest, earliest = Settings(), Settings(start_policy="earliest")
    assert start_lookback_s(earliest, "events") is None
    assert start_lookback_s(latest, "events") == 0
    assert start_lookback_s(latest.with_overrides(start_lookback_minutes=30), "events") == 1800
    # The delivery sensor looks back the maximum alert age (or the look-back, if longer).
    assert start_lookback_s(latest, "slack-messages") == 24 * 3600
    longer = latest.with_overrides(start_lookback_minutes=48 * 60)
    assert start_lookback_s(longer, "slack-messages") == 48 * 3600
    marks = {0: (0, 10)}
    assert locate_starts(latest, "events", marks, [0], 0.0)[:2] == (None, True)
    assert locate_starts(earliest, "events", marks, [0], 0.0)[:2] == (None, False)
    assert locate_starts(latest, "events", marks, [], 0.0) == (None, False, [])
