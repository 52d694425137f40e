"""librdkafka configuration property names, for the ``KAFKA_*`` pass-through of the settings.

Beside :mod:`alert_platform.settings`, not in :mod:`alert_platform.kafka`: the settings read it,
and the Kafka package reads the settings (no import cycle).

The global and topic properties of librdkafka 2.16 (the version confluent-kafka 2.16 bundles), from
librdkafka's CONFIGURATION.md, checked against the installed library (each name is accepted by
``Producer``; see tests/unit/test_settings.py). Properties set "through dedicated API" (callbacks,
pointers such as ``error_cb`` or ``opaque``) are left out: an environment variable cannot set
them. :data:`HIDDEN` are names librdkafka 2.16 accepts that CONFIGURATION.md does not list.

A property newer than this list can still be passed with the explicit prefix
``ALERT_PLATFORM_KAFKA_PROPERTY_`` (see :mod:`alert_platform.settings`).
"""

from __future__ import annotations

import re

GLOBAL: frozenset[str] = frozenset(
    {
        "allow.auto.create.topics",
        "api.version.fallback.ms",
        "api.version.request",
        "api.version.request.timeout.ms",
        "auto.commit.interval.ms",
        "batch.num.messages",
        "batch.size",
        "bootstrap.servers",
        "broker.address.family",
        "broker.address.ttl",
        "broker.version.fallback",
        "builtin.features",
        "check.crcs",
        "client.dns.lookup",
        "client.id",
        "client.rack",
        "compression.codec",
        "compression.type",
        "connections.max.idle.ms",
        "coordinator.query.interval.ms",
        "debug",
        "delivery.report.only.error",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.gapless.guarantee",
        "enable.idempotence",
        "enable.metrics.push",
        "enable.partition.eof",
        "enable.random.seed",
        "enable.sasl.oauthbearer.unsecure.jwt",
        "enable.ssl.certificate.verification",
        "enabled_events",
        "fetch.error.backoff.ms",
        "fetch.max.bytes",
        "fetch.message.max.bytes",
        "fetch.min.bytes",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "heartbeat.interval.ms",
        "https.ca.location",
        "https.ca.pem",
        "internal.termination.signal",
        "isolation.level",
        "linger.ms",
        "log.connection.close",
        "log.queue",
        "log.thread.name",
        "log_level",
        "max.in.flight",
        "max.in.flight.requests.per.connection",
        "max.partition.fetch.bytes",
        "max.poll.interval.ms",
        "max.poll.records",
        "message.copy.max.bytes",
        "message.max.bytes",
        "message.send.max.retries",
        "metadata.broker.list",
        "metadata.max.age.ms",
        "metadata.recovery.rebootstrap.trigger.ms",
        "metadata.recovery.strategy",
        "offset.store.method",
        "partition.assignment.strategy",
        "plugin.library.paths",
        "queue.buffering.backpressure.threshold",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.messages",
        "queue.buffering.max.ms",
        "queued.max.messages.kbytes",
        "queued.min.messages",
        "receive.message.max.bytes",
        "reconnect.backoff.jitter.ms",
        "reconnect.backoff.max.ms",
        "reconnect.backoff.ms",
        "retries",
        "retry.backoff.max.ms",
        "retry.backoff.ms",
        "sasl.kerberos.keytab",
        "sasl.kerberos.kinit.cmd",
        "sasl.kerberos.min.time.before.relogin",
        "sasl.kerberos.principal",
        "sasl.kerberos.service.name",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.oauthbearer.assertion.algorithm",
        "sasl.oauthbearer.assertion.claim.aud",
        "sasl.oauthbearer.assertion.claim.exp.seconds",
        "sasl.oauthbearer.assertion.claim.iss",
        "sasl.oauthbearer.assertion.claim.jti.include",
        "sasl.oauthbearer.assertion.claim.nbf.seconds",
        "sasl.oauthbearer.assertion.claim.sub",
        "sasl.oauthbearer.assertion.file",
        "sasl.oauthbearer.assertion.jwt.template.file",
        "sasl.oauthbearer.assertion.private.key.file",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.oauthbearer.client.credentials.client.id",
        "sasl.oauthbearer.client.credentials.client.secret",
        "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.extensions",
        "sasl.oauthbearer.grant.type",
        "sasl.oauthbearer.metadata.authentication.type",
        "sasl.oauthbearer.method",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.sub.claim.name",
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.password",
        "sasl.username",
        "security.protocol",
        "session.timeout.ms",
        "share.acknowledgement.mode",
        "socket.blocking.max.ms",
        "socket.connection.setup.timeout.ms",
        "socket.keepalive.enable",
        "socket.max.fails",
        "socket.nagle.disable",
        "socket.receive.buffer.bytes",
        "socket.send.buffer.bytes",
        "socket.timeout.ms",
        "ssl.ca.certificate.stores",
        "ssl.ca.location",
        "ssl.ca.pem",
        "ssl.certificate.location",
        "ssl.certificate.pem",
        "ssl.cipher.suites",
        "ssl.crl.location",
        "ssl.curves.list",
        "ssl.endpoint.identification.algorithm",
        "ssl.engine.id",
        "ssl.engine.location",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.location",
        "ssl.keystore.password",
        "ssl.providers",
        "ssl.sigalgs.list",
        "statistics.interval.ms",
        "sticky.partitioning.linger.ms",
        "topic.blacklist",
        "topic.metadata.propagation.max.ms",
        "topic.metadata.refresh.fast.cnt",
        "topic.metadata.refresh.fast.interval.ms",
        "topic.metadata.refresh.interval.ms",
        "topic.metadata.refresh.sparse",
        "transaction.timeout.ms",
        "transactional.id",
    }
)

TOPIC: frozenset[str] = frozenset(
    {
        "acks",
        "auto.commit.enable",
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "compression.codec",
        "compression.level",
        "compression.type",
        "consume.callback.max.messages",
        "delivery.timeout.ms",
        "enable.auto.commit",
        "message.timeout.ms",
        "offset.store.method",
        "offset.store.path",
        "offset.store.sync.interval.ms",
        "partitioner",
        "produce.offset.report",
        "queuing.strategy",
        "request.required.acks",
        "request.timeout.ms",
    }
)

HIDDEN: frozenset[str] = frozenset(
    {
        "client.software.name",
        "client.software.version",
        "enable.sparse.connections",
        "metadata.request.timeout.ms",
        "test.mock.broker.rtt",
        "test.mock.num.brokers",
    }
)

# The "C/P" column of CONFIGURATION.md: properties only a consumer (C) or a producer (P) uses;
# librdkafka warns when one reaches the other kind of client.
CONSUMER_ONLY: frozenset[str] = frozenset(
    {
        "auto.commit.enable",
        "auto.commit.interval.ms",
        "auto.offset.reset",
        "check.crcs",
        "consume.callback.max.messages",
        "coordinator.query.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "fetch.error.backoff.ms",
        "fetch.max.bytes",
        "fetch.message.max.bytes",
        "fetch.min.bytes",
        "fetch.queue.backoff.ms",
        "fetch.wait.max.ms",
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "group.remote.assignor",
        "heartbeat.interval.ms",
        "isolation.level",
        "max.partition.fetch.bytes",
        "max.poll.interval.ms",
        "max.poll.records",
        "offset.store.method",
        "offset.store.path",
        "offset.store.sync.interval.ms",
        "partition.assignment.strategy",
        "queued.max.messages.kbytes",
        "queued.min.messages",
        "session.timeout.ms",
        "share.acknowledgement.mode",
    }
)

PRODUCER_ONLY: frozenset[str] = frozenset(
    {
        "acks",
        "batch.num.messages",
        "batch.size",
        "compression.codec",
        "compression.level",
        "compression.type",
        "delivery.report.only.error",
        "delivery.timeout.ms",
        "enable.gapless.guarantee",
        "enable.idempotence",
        "linger.ms",
        "message.send.max.retries",
        "message.timeout.ms",
        "partitioner",
        "produce.offset.report",
        "queue.buffering.backpressure.threshold",
        "queue.buffering.max.kbytes",
        "queue.buffering.max.messages",
        "queue.buffering.max.ms",
        "queuing.strategy",
        "request.required.acks",
        "request.timeout.ms",
        "retries",
        "sticky.partitioning.linger.ms",
        "transaction.timeout.ms",
        "transactional.id",
    }
)

ALL: frozenset[str] = GLOBAL | TOPIC | HIDDEN

# ``KAFKA_SASL_USERNAME`` -> ``sasl.username``; also the two names with underscores
# (``KAFKA_LOG_LEVEL`` -> ``log_level``). No two properties share a variable name.
_BY_VARIABLE_SUFFIX: dict[str, str] = {name.upper().replace(".", "_"): name for name in sorted(ALL)}

# Kubernetes service-link variables for a Service whose name starts with "kafka" (``kafka``,
# ``kafka-ui`` -> ``KAFKA_UI_...``): ``KAFKA_SERVICE_HOST``, ``KAFKA_SERVICE_PORT``,
# ``KAFKA_SERVICE_PORT_<PORT NAME>``, ``KAFKA_PORT``, ``KAFKA_PORT_<N>_<PROTO>`` and its
# ``_PROTO`` / ``_PORT`` / ``_ADDR`` variants, for any port number and protocol.
_SERVICE_LINK = re.compile(
    r"KAFKA(?:_[A-Z0-9_]+?)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT"
    r"|PORT_[0-9]+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)"
)


def property_for_variable(suffix: str) -> str | None:
    """The librdkafka property a ``KAFKA_<suffix>`` variable names, or None."""
    return _BY_VARIABLE_SUFFIX.get(suffix.upper())


def is_service_link_variable(name: str) -> bool:
    """True for a Kubernetes service-link variable such as ``KAFKA_PORT_9092_TCP_ADDR``."""
    return _SERVICE_LINK.fullmatch(name) is not None
