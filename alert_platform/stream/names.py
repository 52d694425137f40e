"""Names of the streams, their consumer groups and their run tags (one place)."""

from __future__ import annotations

from alert_platform import topics
from alert_platform.pipelines.registry import PIPELINES

DELIVERY_STREAM = topics.SLACK_MESSAGES


def source_streams() -> list[str]:
    """Every source topic a pipeline reads: one enrichment stream each."""
    return list(dict.fromkeys(spec.source_topic for spec in PIPELINES.values()))


def all_streams() -> list[str]:
    """The enrichment streams, then the delivery stream."""
    return [*source_streams(), DELIVERY_STREAM]


def stream_group(prefix: str, stream: str) -> str:
    """The consumer group of ``stream``'s workers (``<prefix>.<stream>``)."""
    return f"{prefix}.{stream}"


def check_stream(stream: str) -> str:
    """``stream`` if it names a stream, else a ``ValueError`` listing them."""
    known = all_streams()
    if stream not in known:
        raise ValueError(f"unknown stream {stream!r}; streams: {', '.join(known)}")
    return stream
