"""Topic administration: idempotent creation from the :mod:`alert_platform.topics` catalogue."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from alert_platform.kafka.clients import make_admin
from alert_platform.settings import Settings
from alert_platform.topics import ALL_TOPICS, TopicSpec


class TopicAdminError(RuntimeError):
    """Creating or describing topics failed; the message names each failing topic."""


def create_topics(
    settings: Settings,
    specs: Iterable[TopicSpec] = ALL_TOPICS,
    *,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
) -> list[str]:
    """Create every topic in ``specs`` that does not exist yet; return the names newly created.

    Idempotent: a topic that already exists counts as success (it is not changed, and it is not
    in the returned list). Any other error raises :class:`TopicAdminError` naming the topics.
    """
    specs = list(specs)
    if not specs:
        return []
    admin = admin or make_admin(settings)
    new_topics = [
        NewTopic(spec.name, num_partitions=spec.partitions, config=dict(spec.config))
        for spec in specs
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    created: list[str] = []
    failures: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            failures.append(f"{name}: {error}")
        except Exception as exc:  # timeouts from the future itself
            failures.append(f"{name}: {exc!r}")
        else:
            created.append(name)
    if failures:
        raise TopicAdminError("could not create topic(s): " + "; ".join(failures))
    return [spec.name for spec in specs if spec.name in created]


def list_topics(settings: Settings, *, timeout: float = 10.0) -> dict[str, int]:
    """Existing topics (internal ``__`` topics excluded) -> partition count."""
    metadata = make_admin(settings).list_topics(timeout=timeout)
    return {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if not name.startswith("__")
    }


def describe_topic_configs(
    settings: Settings,
    topics: Iterable[str],
    *,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
) -> dict[str, dict[str, str]]:
    """Topic name -> {config name: value} as the broker reports it (``None`` values dropped)."""
    admin = admin or make_admin(settings)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in topics]
    if not resources:
        return {}
    result: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout=timeout)
        except Exception as exc:
            failures.append(f"{resource.name}: {exc}")
            continue
        result[resource.name] = {
            name: entry.value for name, entry in entries.items() if entry.value is not None
        }
    if failures:
        raise TopicAdminError("could not describe topic(s): " + "; ".join(failures))
    return result


def delete_topics(settings: Settings, topics: Iterable[str], *, timeout: float = 30.0) -> list[str]:
    """Delete ``topics``; a topic that does not exist is ignored. Returns the names deleted."""
    names = list(topics)
    if not names:
        return []
    admin = make_admin(settings)  # held until the futures resolve: a dropped client aborts them
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    deleted = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise TopicAdminError(f"could not delete topic {name}: {error}") from exc
        deleted.append(name)
    return deleted


def topic_id(settings: Settings, topic: str, *, timeout: float = 5.0) -> str:
    """The topic's id (a new one each time the topic is created), or ``""`` when it cannot be
    had: an older broker without topic ids, the topic missing, or the broker unreachable.

    Offsets alone cannot tell a recreated topic from the old one once the new one holds as
    many records as were read from the old: the id can.
    """
    admin = make_admin(settings)
    try:
        future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
        found = future.result(timeout=timeout).topic_id
    except Exception:  # KafkaException, timeouts: unknown this time; callers keep what they had
        return ""
    text = str(found) if found is not None else ""
    return "" if text.strip("A=") == "" else text  # the all-zero id means "none"
