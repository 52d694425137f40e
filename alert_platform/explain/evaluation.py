"""Re-evaluate one source record with its pipeline: the engine's own stages, observed.

:func:`evaluate` runs :func:`~alert_platform.pipelines.engine.enrich_batch` on the single
record, with the spec's stage functions and lookup tables wrapped so that what each stage
produced (the parsed event, the validated fields, each join's key and row) is kept. The verdict
(alert, filtered out, unmatched, dead-lettered) is the engine's; there is no second copy of
its stages here. Why a filter dropped an event comes from the spec's ``explain_filter``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from msgspec import UNSET

from alert_platform import topics
from alert_platform.explain.models import (
    ALERT,
    DEAD_LETTERED,
    FILTERED_OUT,
    UNMATCHED,
    EventExplanation,
    JoinStep,
    compact,
)
from alert_platform.kafka.records import SourceRecord
from alert_platform.pipelines.engine import STAGE_VALIDATE, BatchResult, enrich_batch
from alert_platform.pipelines.spec import Context, Join, Lookup, PipelineSpec, RenderOptions
from alert_platform.wire import decode_slack_message


@dataclass
class Observed:
    """What the spec's stages produced for one record, as the engine ran them."""

    event: Any = None  # what parse returned (None: it raised)
    fields: dict[str, Any] | None = None  # what validate returned (None: not reached / raised)
    joins: list[JoinStep] = field(default_factory=list)  # the joins the engine looked up


class _ObservedLookup:
    """A join's lookup table that records each row found for its join."""

    def __init__(self, join: Join, lookup: Lookup, seen: Observed) -> None:
        self._join, self._lookup, self._seen = join, lookup, seen

    def get(self, key: str, /) -> Mapping[str, Any] | None:
        row = self._lookup.get(key)
        join = self._join
        copy = None if row is None else dict(row)
        self._seen.joins.append(
            JoinStep(join.as_, join.table, join.kind, key, row is not None, copy)
        )
        return row


def _observed_spec(
    spec: PipelineSpec, lookups: Mapping[str, Lookup], seen: Observed
) -> tuple[PipelineSpec, dict[str, Lookup]]:
    """``spec`` with stages that record into ``seen``, and its tables (one per join, so that
    two joins of one table are told apart)."""

    def parse(record: SourceRecord) -> Any:
        seen.event = spec.parse(record)
        return seen.event

    def validate(record: SourceRecord, event: Any) -> Mapping[str, Any]:
        fields = spec.validate(record, event)
        seen.fields = dict(fields)
        return fields

    def observed_key(join: Join) -> Any:
        def key(context: Context) -> str | None:
            value = join.key(context)
            if value is None:  # the engine looks nothing up: no row
                seen.joins.append(JoinStep(join.as_, join.table, join.kind, None, False, None))
            return value

        return key

    joins, tables = [], {}
    for number, join in enumerate(spec.joins):
        alias = f"{number}:{join.table}"
        joins.append(dataclasses.replace(join, table=alias, key=observed_key(join)))
        tables[alias] = _ObservedLookup(join, lookups[join.table], seen)
    observed = dataclasses.replace(spec, parse=parse, validate=validate, joins=tuple(joins))
    return observed, tables


def run_observed(
    spec: PipelineSpec,
    record: SourceRecord,
    lookups: Mapping[str, Lookup],
    options: RenderOptions,
) -> tuple[BatchResult, Observed]:
    """The engine's verdict on ``record`` and what its stages produced on the way.

    A record whose event time is out of bounds is dead-lettered before its joins; they are
    then observed in a second engine run without the bounds (its verdict is not used)."""
    seen = Observed()
    observed, tables = _observed_spec(spec, lookups, seen)
    verdict = enrich_batch(observed, [record], tables, options)
    if (
        verdict.dead_letters
        and verdict.dead_letters[0].stage == STAGE_VALIDATE
        and seen.fields is not None
        and (options.event_time_max_past is not None or options.event_time_max_future is not None)
    ):
        unbounded = dataclasses.replace(
            options, event_time_max_past=None, event_time_max_future=None
        )
        seen.joins.clear()
        enrich_batch(observed, [record], tables, unbounded)
    return verdict, seen


def evaluate(
    spec: PipelineSpec,
    record: SourceRecord,
    lookups: Mapping[str, Lookup],
    options: RenderOptions,
    explanation: EventExplanation,
) -> EventExplanation:
    """Fill ``explanation`` with the engine's verdict on ``record`` and the detail behind it."""
    verdict, seen = run_observed(spec, record, lookups, options)
    explanation.fields = seen.fields
    explanation.joins = seen.joins
    if seen.fields is not None:
        try:
            explanation.alert_id = spec.alert_id_of(seen.fields)
            event_time = seen.fields.get(spec.event_time_field)
            explanation.event_time = event_time if isinstance(event_time, str) else None
        except Exception:
            pass
    if verdict.alerts:
        alert = verdict.alerts[0]
        explanation.outcome = ALERT
        explanation.alert_id = alert.alert_id
        explanation.event_time = alert.event_time
        explanation.channel = alert.channel_id
        intended = decode_slack_message(alert.value).intended_for
        if intended is UNSET:
            intended = None
        if intended is not None:
            explanation.routed_to_fallback = True
            explanation.intended_for = intended
            missed = [j for j in seen.joins if not j.matched]
            why = "; ".join(miss_text(j) for j in missed) or "the route gave no channel"
            explanation.reason = (
                f"alert routed to the fallback channel {alert.channel_id} ({why}); "
                f"meant for {compact(intended)}"
            )
        else:
            explanation.reason = f"alert to {alert.channel_id}"
    elif verdict.dead_letters:
        dead = verdict.dead_letters[0]
        explanation.outcome = DEAD_LETTERED
        explanation.stage = dead.stage
        explanation.reason = f"dead-lettered to {topics.ALERTS_DLQ} at stage {dead.stage}: "
        explanation.reason += dead.reason
    elif verdict.counts.filtered_out:
        explanation.outcome = FILTERED_OUT
        explanation.reason = "filtered out: " + filter_reason(spec, record, seen.event)
    elif verdict.counts.unmatched:
        explanation.outcome = UNMATCHED
        missed = next((j for j in seen.joins if not j.matched and j.kind == "inner"), None)
        explanation.reason = "no alert: " + (
            miss_text(missed) if missed else "an inner join found no row"
        )
    else:  # pragma: no cover - every record ends in exactly one bucket
        explanation.reason = f"no verdict from the engine: {verdict.counts.as_dict()}"
    return explanation


def miss_text(step: JoinStep) -> str:
    """Why a join found no row."""
    if step.key is None:
        return f"join {step.name!r} ({step.kind}) has no key to look up in {step.table}"
    return f"no {step.table} row for key {step.key!r} (join {step.name!r}, {step.kind})"


def filter_reason(spec: PipelineSpec, record: SourceRecord, event: Any) -> str:
    """Why ``spec``'s filter dropped ``event``: its ``explain_filter`` when it has one (and it
    does not fail), else the first line of the filter's docstring."""
    explain = spec.explain_filter
    if explain is not None:
        try:
            return explain(record, event)
        except Exception:
            pass
    doc = (spec.keep.__doc__ or "").strip().splitlines()
    return f"the {spec.name} filter rejected the event" + (f" ({doc[0]})" if doc else "")
