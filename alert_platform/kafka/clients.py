"""confluent-kafka clients built from :class:`~alert_platform.settings.Settings`.

Consumers are *assign-only readers*: the platform reads explicit offset ranges with assign + seek
and never trusts consumer-group commits (see docs/architecture.md, "Offsets, not consumer
groups"). A ``group.id`` is still set because librdkafka requires one for some APIs
(``committed``, ``offsets_for_times`` on some versions), but nothing is ever committed.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from alert_platform import librdkafka_properties as properties
from alert_platform.settings import Settings

DEFAULT_GROUP_ID = "alert-platform-reader"

# librdkafka warns when a consumer-only property reaches a producer or admin client (and a
# producer-only one a consumer): the pass-through settings are filtered per client kind.
_CONSUMER_ONLY = properties.CONSUMER_ONLY | frozenset(
    {
        "fetch.wait.max.ms",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "group.id",
        "group.instance.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "isolation.level",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
    }
)

CONSUMER_DEFAULTS: dict[str, str | int | bool] = {
    "group.id": DEFAULT_GROUP_ID,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}

PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 10,
    "compression.type": "lz4",
}


def _without_consumer_only(config: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
    return {k: v for k, v in config.items() if k not in _CONSUMER_ONLY}


def consumer_config(settings: Settings, **extra: str | int | bool) -> dict[str, str | int | bool]:
    """The config :func:`make_consumer` uses (defaults < settings/profile < ``extra``)."""
    shared = settings.kafka_client_config()
    config = {
        **CONSUMER_DEFAULTS,
        **{k: v for k, v in shared.items() if k not in properties.PRODUCER_ONLY},
    }
    config.update(extra)
    return config


def producer_config(settings: Settings, **extra: str | int | bool) -> dict[str, str | int | bool]:
    """The config :func:`make_producer` uses (defaults < settings/profile < ``extra``)."""
    config = {**PRODUCER_DEFAULTS, **_without_consumer_only(settings.kafka_client_config())}
    config.update(extra)
    return config


def admin_config(settings: Settings, **extra: str | int | bool) -> dict[str, str | int | bool]:
    """The config :func:`make_admin` uses."""
    config = _without_consumer_only(settings.kafka_client_config())
    config.update(extra)
    return config


def make_consumer(
    settings: Settings, *, group_id: str | None = None, **extra: str | int | bool
) -> Consumer:
    """An assign-only consumer: no auto commit, no offset store; use ``assign`` + ``seek``.

    ``extra`` are librdkafka properties with dots spelled as-is, e.g.
    ``make_consumer(s, **{"fetch.max.bytes": 1 << 20})``.
    """
    if group_id is not None:
        extra = {**extra, "group.id": group_id}
    return Consumer(consumer_config(settings, **extra))


def make_producer(
    settings: Settings,
    *,
    error_cb: Callable[[KafkaError], None] | None = None,
    **extra: str | int | bool,
) -> Producer:
    """An idempotent producer (``acks=all``, small linger, lz4).

    ``error_cb`` receives the client-level errors librdkafka reports while the producer is
    polled or flushed (e.g. ``_TRANSPORT``, ``_ALL_BROKERS_DOWN``; it retries those itself).
    confluent-kafka does not pass *fatal* errors to it: ``poll``/``flush`` raise them as a
    ``KafkaException`` (see :class:`~alert_platform.kafka.writer.BatchProducer`).
    """
    config: dict[str, object] = {**producer_config(settings, **extra)}
    if error_cb is not None:
        config["error_cb"] = error_cb
    return Producer(config)


def make_admin(settings: Settings, **extra: str | int | bool) -> AdminClient:
    """An AdminClient for topic management and metadata."""
    return AdminClient(admin_config(settings, **extra))
